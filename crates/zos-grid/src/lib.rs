//! The grid's orchestration logic (docs/grid.md): where each replica of a placement
//! contract runs. [`plan`] is the pure decision the orchestrator (`zos bot run`) makes
//! from what it reads in the notary; [`view`] is the bot's grid, kept from the notary's
//! events; reading it, writing the assignments and leading are the [`bot`]'s.

pub mod bot;
pub mod plan;
pub mod record;
pub mod view;

pub use bot::{Bot, BotError, Round};
pub use plan::{plan, ContractView, NodeView, Reason, ReplicaView, Report, Step, MAX_REFUSALS};
pub use record::{Drain, DrainError, Handover, Move, PlacementRecord, ReplicaRecord, ReplicaState};
pub use view::{Feed, GridView};
