#!/bin/sh
# /init of a vmboot exec image (busybox ash as PID 1). See vmboot.execute.image
# for the host side of the protocol. Every exec of busybox is expensive under an
# emulating hypervisor, so this uses as few as it can.
bb=/bin/busybox
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null   # already mounted is fine

say() { echo "vmboot-init: $*" >/dev/console; }

# ttyS1..3 carry stdout, stderr and the status; the kernel only registers them with
# 8250.nr_uarts=4 on its command line. Raw mode: no \n -> \r\n, no echo, 8-bit clean.
ok=1
for n in 1 2 3; do
  if [ ! -c /dev/ttyS$n ]; then
    say "/dev/ttyS$n is missing: boot with 8250.nr_uarts=4"; ok=0
  elif ! $bb stty -F /dev/ttyS$n raw -echo; then
    say "cannot set up /dev/ttyS$n (no UART at its I/O port?)"; ok=0
  fi
done

if [ "$ok" = 1 ]; then
  . /vmboot/run.sh
fi
exec $bb reboot -f
