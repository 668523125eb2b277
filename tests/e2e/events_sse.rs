//! `GET /api/events`: the Server-Sent Events stream resumes after
//! `Last-Event-ID` with exactly the missed events, then goes on live; the
//! JSON form (`?since=ID`) lists the same events.

use std::time::Duration;

use crate::support::sse::Frame;
use crate::support::{event_kinds, int_of, time_of, Bed, Settings, Value};

const STREAM_WAIT: Duration = Duration::from_secs(10);

/// `GET /api/events?since=after`: the stored events, oldest first.
fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| int_of(e, "id")).collect()
}

/// Creates a client key and returns its `client_created` event.
fn new_client_event(bed: &Bed, name: &str) -> Value {
    let (id, _) = bed.new_client(name);
    let last = bed
        .events_since(0)
        .pop()
        .expect("an event after creating a client");
    assert_eq!(last["kind"], "client_created", "{last}");
    assert!(
        last["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("client {id} "))),
        "{last}"
    );
    last
}

/// Asserts that `frame` is `event` as the stream sends it: the SSE id and
/// event name are its id and kind, the data is the event itself (its `at`
/// to the millisecond: see [`a_live_event_reads_the_same_as_its_stored_copy`]).
fn assert_frame_is(frame: &Frame, event: &Value) {
    assert_eq!(
        frame.event_id(),
        int_of(event, "id"),
        "{frame:?} vs {event}"
    );
    assert_eq!(
        frame.event.as_deref(),
        event["kind"].as_str(),
        "{frame:?} vs {event}"
    );
    let (mut sent, mut stored) = (frame.json(), event.clone());
    let (sent_at, stored_at) = (time_of(&sent, "at"), time_of(&stored, "at"));
    assert_eq!(
        sent_at.timestamp_millis(),
        stored_at.timestamp_millis(),
        "{sent} vs {stored}"
    );
    sent["at"].take();
    stored["at"].take();
    assert_eq!(
        sent, stored,
        "the stream's copy of event {} differs from the stored one",
        event["id"]
    );
}

#[test]
fn last_event_id_replays_exactly_the_missed_events_then_goes_live() {
    let bed = Bed::start(Settings::default());
    bed.new_client("one");
    bed.add_account("ann", 0);
    let (two, _) = bed.new_client("two");
    bed.add_account("bob", 1);
    bed.admin()
        .delete(&format!("/api/clients/{two}"))
        .expect(204);
    bed.new_client("three");

    let all = bed.events_since(0);
    assert_eq!(
        event_kinds(&all),
        [
            "client_created",
            "account_added",
            "client_created",
            "account_added",
            "client_revoked",
            "client_created"
        ],
        "{all:?}"
    );
    let all_ids = ids(&all);
    assert!(
        all_ids.windows(2).all(|w| w[0] < w[1]),
        "event ids are not increasing: {all_ids:?}"
    );

    let resume_after = all_ids[1];
    let missed: Vec<Value> = all
        .iter()
        .filter(|e| int_of(e, "id") > resume_after)
        .cloned()
        .collect();
    assert_eq!(
        ids(&bed.events_since(resume_after)),
        ids(&missed),
        "?since={resume_after}"
    );
    assert!(
        bed.events_since(*all_ids.last().unwrap()).is_empty(),
        "?since=<newest> must be empty"
    );

    let admin = bed.admin();
    let resumed = admin
        .event_stream("/api/events", Some(&resume_after.to_string()))
        .unwrap_or_else(|r| panic!("{r:?}"));
    let fresh = admin
        .event_stream("/api/events", None)
        .unwrap_or_else(|r| panic!("{r:?}"));
    let replayed = resumed.take(missed.len(), STREAM_WAIT);
    for (frame, event) in replayed.iter().zip(&missed) {
        assert_frame_is(frame, event);
    }

    // Then live, on both streams: the next event and nothing before it (no
    // duplicate of a replayed event, no replay on the stream without
    // Last-Event-ID), then the one after.
    for name in ["four", "five"] {
        let event = new_client_event(&bed, name);
        for stream in [&resumed, &fresh] {
            let frame = stream
                .next(STREAM_WAIT)
                .unwrap_or_else(|| panic!("no live frame for {event}"));
            assert_frame_is(&frame, &event);
        }
    }
}

/// One event is one value: what the stream (and a webhook) sends live is
/// what a replay or `?since` returns later, `at` included.
#[test]
fn a_live_event_reads_the_same_as_its_stored_copy() {
    let bed = Bed::start(Settings::default());
    let live = bed
        .admin()
        .event_stream("/api/events", None)
        .unwrap_or_else(|r| panic!("{r:?}"));
    let stored = new_client_event(&bed, "one");
    let replay = bed
        .admin()
        .event_stream("/api/events", Some("0"))
        .unwrap_or_else(|r| panic!("{r:?}"));
    for (how, stream) in [("replayed", &replay), ("live", &live)] {
        let frame = stream
            .next(STREAM_WAIT)
            .unwrap_or_else(|| panic!("no {how} frame for {stored}"));
        assert_eq!(
            frame.json(),
            stored,
            "the {how} copy of the event differs from the stored one"
        );
    }
}

#[test]
fn a_bad_resume_point_is_a_400_json_error() {
    let bed = Bed::start(Settings::default());
    bed.new_client("one");
    let admin = bed.admin();
    for bad in ["abc", "1.5", "99999999999999999999"] {
        let resp = admin
            .event_stream("/api/events", Some(bad))
            .map(|_| ())
            .expect_err("a bad Last-Event-ID opened a stream");
        let body = resp.expect_error(400, "bad_request");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("Last-Event-ID")),
            "Last-Event-ID {bad:?}: {body}"
        );
    }
    for bad in ["abc", "", "-"] {
        let body = admin
            .get(&format!("/api/events?since={bad}"))
            .expect_error(400, "bad_request");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains("since")),
            "since={bad:?}: {body}"
        );
    }
    let anonymous = bed
        .api(None)
        .event_stream("/api/events", Some("1"))
        .map(|_| ());
    anonymous
        .expect_err("an anonymous stream")
        .expect_error(401, "unauthorized");
    bed.client("worker")
        .get("/api/events?since=0")
        .expect_error(403, "forbidden");
}
