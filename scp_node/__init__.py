"""The dicom-cae DICOM node: receives studies by C-STORE, processes them off the network path
with the dicom_cae pipeline, writes study reports and forwards the derived series.

Modules: config (settings), spool (durable received instances), state (SQLite: studies and
outbox), worker (batched processing), forward (C-STORE to a destination), server (the
pynetdicom SCP), monitor (HTTP /health and /metrics), node (wires them together), cli.
"""
