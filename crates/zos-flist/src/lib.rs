//! rfs-compatible .fl flists: pack, verify, fetch, cache, mount, signatures.
