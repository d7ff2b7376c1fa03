"""Fleet telemetry: MQTT events, status and metrics, model roll-outs, a Prometheus textfile.

Only ``mqtt.py`` imports paho-mqtt and only ``prometheus.py`` prometheus_client; the other
modules are plain Python:

========================  ==============================================================
``topics.py``             topic names and the status payloads
``credentials.py``        the broker password: systemd credential or environment
``outbox.py``             the event log as the offline queue (what to send, what was acked)
``stats.py``              item counts, unsure rate, latency percentiles
``sysinfo.py``            CPU temperature and throttling, where readable
``prometheus.py``         the node_exporter textfile: prometheus_client's exposition, atomic
``rollout.py``            roll-out messages: parse, fetch, verify the sha256
``rollout_worker.py``     the thread that installs a roll-out through the model store
``runtime.py``            the telemetry thread that ties them together for the service
``fleetview.py``          ``bin-daemon fleet watch``: the table of bins
========================  ==============================================================
"""
