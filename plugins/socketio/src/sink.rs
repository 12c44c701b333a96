//! The `socketio` sink: sends each record's JSON value as a Socket.IO event to the clients
//! of its room, or to every client when it has none. A client may ask for some event types
//! only. A client too slow to keep up is disconnected and counted; it never holds the
//! pipeline back.

use weir_plugin::json::{Doc, Pointer};
use weir_plugin::{BatchRef, Context, PluginError, Rejections, Sink};

use crate::config::SinkConfig;
use crate::server::{self, Attached, Role, SinkRole};
use weir_plugin::origins::Origins;

/// The `socketio` sink.
pub struct SocketIoSink {
    config: SinkConfig,
    ctx: Context,
    attached: Option<Attached>,
    /// `config.type_field`, read once.
    type_field: Pointer,
}

impl Sink for SocketIoSink {
    type Config = SinkConfig;
    const NAME: &'static str = "socketio";
    const DESCRIPTION: &'static str =
        "Socket.IO server (WebSocket and long-polling) sending each record as an event to a room or to every client.";

    fn validate(config: &SinkConfig) -> Result<(), PluginError> {
        config.check().map_err(PluginError::from)
    }

    fn create(config: SinkConfig, ctx: Context) -> Result<Self, PluginError> {
        let role = Role::Sink(SinkRole {
            room: config.room.clone(),
            join_event: config.join_event.clone(),
            joined_event: config.joined_event.clone(),
            health_path: config.health_path.clone(),
        });
        let attached = server::attach(&config.server(), ctx, Origins::new(&config.allowed_origins), role)?;
        let type_field = Pointer::parse(&config.type_field).map_err(|e| PluginError::config(format!("type_field: {e}")))?;
        Ok(SocketIoSink { config, ctx, attached: Some(attached), type_field })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let Some(attached) = &self.attached else {
            return Err(PluginError::fatal("the sink was stopped"));
        };
        let server = attached.server().clone();
        let mut slow = Vec::new();
        {
            let clients = server.clients();
            let targets: Vec<_> = clients
                .iter()
                .filter(|(_, c)| self.config.room.as_ref().is_none_or(|room| c.rooms.contains(room)))
                .map(|(sid, c)| (*sid, c))
                .collect();
            let filtering = targets.iter().any(|(_, c)| c.types.is_some());
            for (i, r) in batch.iter().enumerate() {
                let Some(json) = server::as_json(r.value) else {
                    rejections.reject(i, "the value is not JSON; the socketio sink sends JSON values");
                    continue;
                };
                if targets.is_empty() {
                    continue;
                }
                let event_type = if filtering { Doc::parse(r.value).ok().and_then(|d| d.get_str(&self.type_field)) } else { None };
                for (sid, c) in &targets {
                    if let Some(types) = &c.types {
                        if !event_type.as_ref().is_some_and(|t| types.contains(t.as_ref())) {
                            continue;
                        }
                    }
                    if slow.contains(sid) {
                        continue;
                    }
                    if let Err(e) = c.socket.emit(&self.config.event, json) {
                        match e {
                            socketioxide::SendError::Socket(socketioxide::SocketError::InternalChannelFull) => slow.push(*sid),
                            // Closed: its disconnect handler removes it.
                            socketioxide::SendError::Socket(_) => {}
                            socketioxide::SendError::Serialize(e) => {
                                rejections.reject(i, &format!("cannot encode the value as a Socket.IO packet: {e:?}"));
                                break;
                            }
                        }
                    }
                }
            }
        }
        server.drop_slow(&self.ctx, &slow);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        // Detaches; the server stops when no stage uses it any more.
        self.attached = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, MockHost};

    #[test]
    fn a_value_that_is_not_json_is_refused_with_the_reason() {
        let host = MockHost::new();
        let config: SinkConfig = serde_json::from_value(serde_json::json!({"listen": "127.0.0.1:0"})).unwrap();
        let mut sink = SocketIoSink::create(config, host.context()).unwrap();
        let mut rej = Rejections::new();
        sink.write(&json_batch([r#"{"eventType":"a"}"#, "not json"]).as_ref(), &mut rej).unwrap();
        let refused: Vec<_> = rej.iter().collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, 1);
        assert!(refused[0].1.contains("not JSON"), "{refused:?}");
        assert_eq!(host.metric("connected_clients"), Some(0.0));
        sink.stop().unwrap();
    }
}
