# Normalizes run-specific output of pg_test/ before it is compared with expected/.
# Process ids in messages.
s/\bpid [0-9]+\b/pid <pid>/g
s/\bPID [0-9]+\b/PID <pid>/g
# Timestamps such as 2026-11-29 06:04:46.809222+00.
s/[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([+-][0-9]{2})?/<timestamp>/g
# Global transaction ids (synapse_<node>_<start µs>_<counter>).
s/\bsynapse_[0-9]+_[0-9]+_[0-9]+\b/synapse_<gxid>/g
