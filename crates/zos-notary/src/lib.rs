//! Notary trait and backends (dir://, etcd://): signed records.
