//! A `tracing_subscriber::Layer` that feeds zosd's own events into the node's shipper.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::line::{Facility, Line, Severity};
use crate::shipper::NodeSink;

/// Sends every event to a [`NodeSink`] as one line: APP-NAME `app` (e.g. "zosd" or
/// "init"), facility `daemon`, severity from the level (ERROR → err, WARN → warning,
/// INFO → info, DEBUG and TRACE → debug), MSGID unset, the event's target as the `target`
/// parameter, and the message followed by the other fields as `name=value`.
///
/// This crate's own events (target `zos_logship`) are not shipped: a destination that is
/// down would otherwise fill its own queue with reports about being down.
pub struct ShipLayer {
    sink: NodeSink,
    app: String,
}

impl ShipLayer {
    /// A layer sending to `sink` under APP-NAME `app`.
    pub fn new(sink: NodeSink, app: impl Into<String>) -> ShipLayer {
        ShipLayer {
            sink,
            app: app.into(),
        }
    }
}

/// The syslog severity of a tracing level.
pub fn severity_of(level: &Level) -> Severity {
    match *level {
        Level::ERROR => Severity::Error,
        Level::WARN => Severity::Warning,
        Level::INFO => Severity::Informational,
        _ => Severity::Debug,
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target().starts_with(env!("CARGO_CRATE_NAME")) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        message.push_str(&fields.rest);
        let line = Line::new(self.app.clone(), severity_of(meta.level()), message)
            .facility(Facility::Daemon)
            .param("target", meta.target());
        self.sink.send(line);
    }
}
