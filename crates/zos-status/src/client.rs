//! Reading the status interface (what `zos status` does): connect to the socket,
//! authenticate peer-to-peer, read properties, hang up.

use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;
use zbus::zvariant::OwnedValue;

use crate::model::NodeStatus;
use crate::{StatusError, INTERFACE, OBJECT_PATH};

/// How long a whole read may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A peer-to-peer connection to a status socket.
pub struct StatusClient {
    conn: zbus::Connection,
}

impl StatusClient {
    /// Connects to the status socket and authenticates (peer-to-peer, no bus daemon).
    pub async fn connect(socket: &Path) -> Result<StatusClient, StatusError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| StatusError::io("connect", socket, e))?;
        let conn = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await?;
        Ok(StatusClient { conn })
    }

    /// One property of `org.zos.Node1`.
    pub async fn property(&self, name: &'static str) -> Result<OwnedValue, StatusError> {
        let reply = self
            .conn
            .call_method(
                None::<&str>,
                OBJECT_PATH,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(INTERFACE, name),
            )
            .await?;
        let value: OwnedValue = reply.body().deserialize()?;
        Ok(value)
    }

    /// A string property.
    pub async fn string(&self, name: &'static str) -> Result<String, StatusError> {
        String::try_from(self.property(name).await?).map_err(|e| StatusError::Property {
            property: name,
            message: e.to_string(),
        })
    }

    /// The whole status, one consistent snapshot.
    pub async fn status(&self) -> Result<NodeStatus, StatusError> {
        Ok(serde_json::from_str(&self.string("StatusJson").await?)?)
    }

    /// The introspection XML of the node object.
    pub async fn introspect(&self) -> Result<String, StatusError> {
        let reply = self
            .conn
            .call_method(
                None::<&str>,
                OBJECT_PATH,
                Some("org.freedesktop.DBus.Introspectable"),
                "Introspect",
                &(),
            )
            .await?;
        Ok(reply.body().deserialize::<String>()?)
    }

    /// The underlying D-Bus connection, for calls this client does not wrap.
    pub fn connection(&self) -> &zbus::Connection {
        &self.conn
    }
}

/// Reads the status from `socket`, within [`TIMEOUT`].
pub async fn read(socket: &Path) -> Result<NodeStatus, StatusError> {
    let timeout = StatusError::Timeout {
        path: socket.to_path_buf(),
        secs: TIMEOUT.as_secs(),
    };
    tokio::time::timeout(TIMEOUT, async {
        StatusClient::connect(socket).await?.status().await
    })
    .await
    .map_err(|_| timeout)?
}
