//! The engine's controllers. Each one is a file that says, in code, what it reads
//! (its inputs: the journal, notary records, the machine's state, the clock) and what
//! it decides (its actions), and decides it in a pure `plan` function, so its tests
//! check plans without a provisioner. [`crate::engine::Engine`] gathers the inputs,
//! calls the plans and executes their actions: journal first, then the machine (on a
//! job of its own when that can take long), then the status.
//!
//! | controller | inputs | actions |
//! |---|---|---|
//! | [`admission`] | a notary record (and, for a placement contract, its assignment), the journal, a blueprint record, the clock | refuse, accept, cancel, keep a tombstone |
//! | [`placement`] | a held replica, the orchestrator's placement record, the liveness lease's last renewal | moved away, fence, run again |
//! | [`provisioning`] | an accepted contract and the version it replaces | provisioner steps, run off the loop |
//! | [`supervision`] | owned contracts, their workloads' states, the instant | retry a provisioning, restart workloads |
//! | [`expiry`] | the journal, the wall clock | expire a contract, delete a grace period's volumes |
//! | [`orphans`] | the machine's inventory, the journal | remove, quarantine |
//! | [`reporting`] | an owned contract, its workloads' statuses, restart errors | a status report, a summary |
//! | [`mesh`] | a network across nodes: its layout, the peer records read, the WireGuard link | the peers to apply, this node's record, the status's mesh section |

pub mod admission;
pub mod expiry;
pub mod mesh;
pub mod orphans;
pub mod placement;
pub mod provisioning;
pub mod reporting;
pub mod supervision;
