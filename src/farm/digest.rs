//! The morning digest (`[digest] schedule`): the events since the previous
//! `digest` event and the accounts as they are, summed up by
//! `domain::digest` and emitted as one `digest` event (webhooks, SSE, the
//! admin page).

use super::Farm;
use crate::domain::digest::{self, AccountSnapshot, Digest};
use crate::domain::AuthState;
use crate::events::{Event, EventKind};

/// Events read from the store per query while collecting a digest's.
const PAGE: usize = 1000;

impl Farm {
    /// Builds the digest of the period since the previous one and emits it.
    pub fn emit_digest(&self) -> Digest {
        let now = self.clock.now();
        let (since, events) = self.events_since_last_digest();
        let min_validity = super::chrono_dur(self.config.rotation.min_validity);
        let accounts: Vec<AccountSnapshot> = self
            .state()
            .accounts
            .values()
            .filter(|a| a.enabled)
            .map(|a| AccountSnapshot {
                id: a.id,
                provider: a.provider.clone(),
                label: a.label.clone(),
                usable: a.is_servable(now, min_validity),
                needs_person: (a.auth == AuthState::NeedsHuman).then(|| match &a.last_error {
                    Some(e) => (e.message.clone(), e.at),
                    None => ("needs a person".to_owned(), now),
                }),
                quota_resets_at: self.proxies().quota(a.id).and_then(|q| q.resets_at),
            })
            .collect();
        let digest = digest::build(since, &events, &accounts, now);
        let data = serde_json::to_value(&digest).unwrap_or_default();
        self.emit_with(EventKind::Digest, None, digest.text(), data);
        tracing::info!(providers = digest.providers.len(), "digest emitted");
        digest
    }

    /// The stored events after the newest `digest` event (all kept ones if
    /// there is none), and that digest's time. Events are pruned after
    /// `events.retention`, which bounds this.
    fn events_since_last_digest(&self) -> (Option<chrono::DateTime<chrono::Utc>>, Vec<Event>) {
        let mut since = None;
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = match self.events.since(after, PAGE) {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "reading events for the digest failed");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.id;
            for ev in page {
                if ev.kind == EventKind::Digest {
                    since = Some(ev.at);
                    events.clear();
                } else {
                    events.push(ev);
                }
            }
        }
        (since, events)
    }

    /// When the `[digest]` job runs (`None`: never).
    pub fn digest_schedule(&self) -> Option<cron::Schedule> {
        self.config.digest.schedule.clone()
    }
}
