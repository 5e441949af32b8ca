# shellcheck shell=sh
# A/B state for BusyBox sh, sourced by /usr/sbin/jetkvm-ota and the
# emulated board's initramfs: partitions by GPT name, and the A/B record
# (libavb's AvbABData) at byte 2048 of `misc`:
#   0  magic "\0AB0"      4  version major, minor   6  reserved (2)
#   8  slot a: priority, tries_remaining, successful_boot, reserved
#   12 slot b: the same   16 reserved (12)          28 CRC32, big-endian
# The CRC (zlib's) covers bytes 0-27.

AB_OFFSET=2048

# The device node of the partition named $1, or nothing.
ab_partition() {
	for u in /sys/class/block/*/uevent; do
		# (-F: a name is matched as it is, never as a pattern)
		if grep -qxF "PARTNAME=$1" "$u" 2>/dev/null; then
			echo "/dev/$(sed -n 's/^DEVNAME=//p' "$u")"
			return 0
		fi
	done
	return 1
}

# The slot this system was booted from (a or b), from the kernel command
# line the bootloader wrote; nothing on a board without slots.
ab_current_slot() {
	read -r cmdline </proc/cmdline
	for w in $cmdline; do
		case "$w" in
			androidboot.slot_suffix=_a) echo a; return 0 ;;
			androidboot.slot_suffix=_b) echo b; return 0 ;;
		esac
	done
	return 1
}

ab_other() {
	if [ "$1" = a ]; then echo b; else echo a; fi
}

# zlib's CRC-32 of the byte values given as arguments.
ab_crc32() {
	c=$((0xFFFFFFFF))
	for b in "$@"; do
		c=$((c ^ b))
		for _ in 1 2 3 4 5 6 7 8; do
			c=$(((c >> 1) ^ (0xEDB88320 & -(c & 1))))
		done
	done
	echo $((c ^ 0xFFFFFFFF))
}

# Reads the record from misc device $1 into AB_BYTES (32 decimal values),
# and AB_A_* / AB_B_* (PRIORITY, TRIES, OK). A record with a bad magic, an
# unknown major version or a wrong CRC is replaced by libavb's default (as
# its bootloader does): returns 1 then, with AB_INVALID saying why.
ab_read() {
	# (echo unquoted: one line, single spaces)
	# shellcheck disable=SC2046,SC2005
	AB_BYTES="$(echo $(od -An -v -tu1 -j "$AB_OFFSET" -N 32 "$1"))"
	AB_INVALID=""
	# shellcheck disable=SC2086 # the record's bytes as positional values
	set -- $AB_BYTES
	if [ "$#" -ne 32 ]; then
		AB_INVALID="short read"
	elif [ "$1 $2 $3 $4" != "0 65 66 48" ]; then
		AB_INVALID="bad magic"
	elif [ "$5" -gt 1 ]; then
		AB_INVALID="major version $5"
	else
		stored=$((${29} << 24 | ${30} << 16 | ${31} << 8 | ${32}))
		crc_bytes="$(echo "$AB_BYTES" | cut -d' ' -f1-28)"
		# shellcheck disable=SC2086
		[ "$(ab_crc32 $crc_bytes)" -eq "$stored" ] || AB_INVALID="CRC mismatch"
	fi
	if [ -n "$AB_INVALID" ]; then
		AB_BYTES="0 65 66 48 1 0 0 0 15 7 0 0 14 7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"
		# shellcheck disable=SC2086
		set -- $AB_BYTES
	fi
	AB_A_PRIORITY=$9 AB_A_TRIES=${10} AB_A_OK=${11}
	AB_B_PRIORITY=${13} AB_B_TRIES=${14} AB_B_OK=${15}
	[ -z "$AB_INVALID" ]
}

# Writes AB_A_* / AB_B_* back into the record on misc device $1 (reserved
# bytes kept), with its CRC, and flushes it.
ab_write() {
	dev="$1"
	# shellcheck disable=SC2086
	set -- $AB_BYTES
	head="$1 $2 $3 $4 $5 $6 $7 $8 $AB_A_PRIORITY $AB_A_TRIES $AB_A_OK ${12}"
	head="$head $AB_B_PRIORITY $AB_B_TRIES $AB_B_OK ${16} ${17} ${18} ${19} ${20}"
	head="$head ${21} ${22} ${23} ${24} ${25} ${26} ${27} ${28}"
	# shellcheck disable=SC2086
	crc=$(ab_crc32 $head)
	AB_BYTES="$head $((crc >> 24 & 255)) $((crc >> 16 & 255)) $((crc >> 8 & 255)) $((crc & 255))"
	esc=""
	for b in $AB_BYTES; do
		esc="$esc$(printf '\\%03o' "$b")"
	done
	# shellcheck disable=SC2059 # the format is the escaped record
	printf "$esc" | dd of="$dev" bs=1 seek="$AB_OFFSET" conv=notrunc,fsync 2>/dev/null
}

# ab_get SLOT FIELD (PRIORITY, TRIES, OK) / ab_set SLOT FIELD VALUE
ab_get() {
	eval "echo \"\$AB_$(echo "$1" | tr ab AB)_$2\""
}

ab_set() {
	eval "AB_$(echo "$1" | tr ab AB)_$2=$3"
}
