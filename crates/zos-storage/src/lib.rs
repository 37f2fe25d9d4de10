//! Disks, btrfs pools, volumes, vdisks, node state home.
