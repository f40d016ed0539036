"""BLE tests: the real bleak against the mock BlueZ on a private dbus-daemon."""
