#!/bin/sh
# The stock system loads its drivers here: the HDMI bridge's among them.
# The board's kernel (Debian's, standing in for the vendor's) has its
# network card as a module, and its stand-ins for the device's hardware
# (vivid's HDMI input, dummy_hcd's USB device controller and the gadget
# functions, and a software watchdog running from the start, as the
# device's hardware one, which its app feeds) on the test disk, when one is
# attached.
modprobe virtio_net
# (findfs is not a stock applet: the board's own BusyBox has it.)
disk="$(busybox findfs LABEL=kvmtest 2>/dev/null)" || exit 0
mkdir -p /tmp/t && mount -o ro "$disk" /tmp/t && mount --bind /tmp/t/lib/modules /lib/modules || exit 0
modprobe softdog soft_margin=10 soft_active_on_boot=1
modprobe vivid num_inputs=1 input_types=3 n_devs=1
for m in dummy_hcd usb_f_hid usb_f_mass_storage; do
	modprobe "$m"
done
