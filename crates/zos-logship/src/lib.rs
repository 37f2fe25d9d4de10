//! Logs leave the node: delivery of log lines to remote destinations.
