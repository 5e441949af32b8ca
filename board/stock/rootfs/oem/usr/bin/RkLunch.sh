#!/bin/sh
# The stock launcher's order (jetkvm/rv1106-system: RkLunch.sh): first the
# hooks in /oem/usr/etc/init.d, each with "start" and waited for; then, in
# the background, the kernel modules, the network (itself in the
# background), a pending update of the app installed, and the app from
# /userdata, its output in /userdata/jetkvm/last.log. On the board the
# network is QEMU's (a static address), and dropbear is not started.

for s in /oem/usr/etc/init.d/S??*; do
	[ -f "$s" ] || continue
	# shellcheck disable=SC1090 # each script, by name
	case "$s" in
		*.sh) (set start; . "$s") ;;
		*) "$s" start ;;
	esac
done

network_init() {
	ifconfig lo 127.0.0.1 up
	ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up && route add default gw 10.0.2.2
}

post_chk() {
	i=0
	while [ "$i" -lt 30 ] && ! grep -q ' /userdata ' /proc/mounts; do
		sleep 0.1
		i=$((i + 1))
	done
	sh /oem/usr/ko/insmod_ko.sh
	network_init &
	app=/userdata/jetkvm/bin/jetkvm_app
	if [ -f /userdata/jetkvm/jetkvm_app.update ]; then
		mv /userdata/jetkvm/jetkvm_app.update "$app"
	fi
	chmod +x "$app"
	"$app" >/userdata/jetkvm/last.log 2>&1 &
}

post_chk &
