#!/bin/sh
# Usage: notify-wrapper.sh APP [ARGS...]
# Reports ready to the supervisor, then becomes the app (same pid, same group).
systemd-notify --ready
exec "$@"
