#!/bin/sh
# Stops the app (waiting for it to end, at most 10 s), then the hooks in
# /oem/usr/etc/init.d with "stop".
killall jetkvm_app 2>/dev/null
i=0
while [ "$i" -lt 10 ] && pidof jetkvm_app >/dev/null; do
	sleep 1
	i=$((i + 1))
done
for s in /oem/usr/etc/init.d/S??*; do
	[ -f "$s" ] || continue
	# shellcheck disable=SC1090 # each script, by name
	case "$s" in
		*.sh) (set stop; . "$s") ;;
		*) "$s" stop ;;
	esac
done
