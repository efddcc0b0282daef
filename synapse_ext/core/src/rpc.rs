//! The gRPC definitions (`proto/synapse.proto`) and JSON helpers for their bodies.

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("synapse.v1");
}

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Wraps a value as a JSON body.
pub fn to_json<T: Serialize>(value: &T) -> pb::Json {
    pb::Json {
        body: serde_json::to_vec(value).expect("serializable"),
    }
}

/// Reads a JSON body, as a gRPC `InvalidArgument` when it does not parse.
pub fn from_json<T: DeserializeOwned>(json: &pb::Json) -> Result<T, tonic::Status> {
    serde_json::from_slice(&json.body)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad JSON body: {e}")))
}
