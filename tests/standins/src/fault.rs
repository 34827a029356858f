//! Misbehaviour a stand-in can be told to show, switchable while it runs.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::server::text;

/// A misbehaviour applied to requests while it is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Answer normally, this much later.
    Delay(Duration),
    /// Answer with this status and `text/plain` body; a 429 also carries `Retry-After: 1`.
    Status(u16, String),
    /// `200` with a JSON content type and a truncated JSON body.
    InvalidJson,
    /// `200` with a valid JSON answer of exactly this many bytes (when that is more than the
    /// smallest answer needs), padded inside a string value.
    Oversized(usize),
    /// Close the connection with a TCP reset, without answering.
    Reset,
    /// Send the answer's headers (with its full `Content-Length`) and half its body, then
    /// reset the connection.
    ResetMidBody,
}

/// The fault currently set, for how many more requests.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    fault: Fault,
    /// `None`: until changed.
    remaining: Option<u32>,
}

impl FaultPlan {
    pub(crate) fn always(fault: Fault) -> Self {
        Self {
            fault,
            remaining: None,
        }
    }

    pub(crate) fn next(count: u32, fault: Fault) -> Self {
        Self {
            fault,
            remaining: Some(count),
        }
    }

    /// The fault for the request at hand.
    pub(crate) fn take(&mut self) -> Fault {
        match &mut self.remaining {
            None => self.fault.clone(),
            Some(0) => Fault::None,
            Some(remaining) => {
                *remaining -= 1;
                self.fault.clone()
            }
        }
    }
}

pub(crate) fn status_reply(code: u16, body: String) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut reply = text(status, body);
    if status == StatusCode::TOO_MANY_REQUESTS {
        reply
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    reply
}
