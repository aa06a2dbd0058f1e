# /vmboot/run.sh: run the vmboot exec command and report how it ended.
# Sourced by /init in the guest; tests run it on the host with busybox sh.
# POSIX sh, shell builtins only, plus one `busybox env` that becomes the command.
#
# Settings (environment variables; the defaults are the guest's):
#   VMBOOT_COMMAND  sh fragment that sets "$@" to: NAME=value... then argv
#                   (default /vmboot/command, written by vmboot.execute.image)
#   VMBOOT_STDIN    the command's stdin   (default /dev/null)
#   VMBOOT_STDOUT   the command's stdout  (default /dev/ttyS1)
#   VMBOOT_STDERR   the command's stderr  (default /dev/ttyS2)
#   VMBOOT_STATUS   status channel        (default /dev/ttyS3)
#   VMBOOT_BUSYBOX  busybox binary        (default /bin/busybox)
#
# Status channel: ASCII lines, each written once, in this order:
#   VMBOOT-START                the command is about to run
#   VMBOOT-EXIT <n>             it ended with status n (0-255; 128+N: killed by signal N;
#                               126/127: could not be executed / not found)
# or, instead of both, VMBOOT-ERROR <text> if the command file cannot be read.

: "${VMBOOT_COMMAND:=/vmboot/command}"
: "${VMBOOT_STDIN:=/dev/null}"
: "${VMBOOT_STDOUT:=/dev/ttyS1}"
: "${VMBOOT_STDERR:=/dev/ttyS2}"
: "${VMBOOT_STATUS:=/dev/ttyS3}"
: "${VMBOOT_BUSYBOX:=/bin/busybox}"

if [ -r "$VMBOOT_COMMAND" ] && . "$VMBOOT_COMMAND"; then
  echo "VMBOOT-START" >>"$VMBOOT_STATUS"
  # A subshell, so that the redirections and the exec touch only the command.
  # env -i: the command sees exactly the variables in the command file, not the
  # kernel's (HOME, TERM, unknown boot options) nor these VMBOOT_* settings.
  ( exec "$VMBOOT_BUSYBOX" env -i -- "$@" ) <"$VMBOOT_STDIN" >>"$VMBOOT_STDOUT" 2>>"$VMBOOT_STDERR"
  vmboot_status=$?
  # Opening and closing each output again waits, if nothing else holds it open, until
  # the tty has sent everything (the last close of a serial port drains it), so the
  # host has all output before it sees the status line.
  : >>"$VMBOOT_STDOUT"
  : >>"$VMBOOT_STDERR"
  echo "VMBOOT-EXIT $vmboot_status" >>"$VMBOOT_STATUS"
else
  echo "VMBOOT-ERROR cannot read the command file $VMBOOT_COMMAND" >>"$VMBOOT_STATUS"
fi
