"""What the programs show: plain console lines, Prometheus metrics and their HTTP server, the terminal views."""
