"""The API's routes, one module per group: answer (the question endpoint), registry (versions, the
champion, and the operator's alias changes), health (liveness and Prometheus metrics)."""
