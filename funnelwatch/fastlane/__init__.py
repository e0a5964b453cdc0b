"""The checkout fast lane: 5-minute slots of the critical checkout metrics, scored as the
landing files of the running hour arrive, raising incidents through the hourly lane's
incident and alert path. See docs/fastlane.md."""
