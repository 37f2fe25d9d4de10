//! Tenant network namespaces, bridges, veth, tap, NAT and isolation.
