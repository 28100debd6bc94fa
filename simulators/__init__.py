"""Slope and device models, fleets, fault injection, scenarios, recorded feeds and live
publishing into MQTT, and plots. Simulators speak the station-facing contract like real
devices do; they never reach into the daemon."""
