//! The SDK's error type: every way a connect, join or call operation can fail.

use duet_proto::{CodecError, RefusalReason};

use crate::fragment::FragmentError;

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The relay answered with a typed refusal.
    #[error("the relay refused: {0}")]
    Refused(RefusalReason),
    #[error("the relay's certificate PEM is unusable: {0}")]
    Certificate(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("could not start connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The call ended (left, ended by the relay, or the connection closed).
    #[error("the call is closed")]
    Closed,
    #[error("the relay broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Fragment(#[from] FragmentError),
    #[error("the connection does not carry QUIC datagrams")]
    DatagramsUnsupported,
    #[error("sending a datagram failed: {0}")]
    SendDatagram(#[from] quinn::SendDatagramError),
    #[error("writing the control stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("signal of {len} bytes exceeds the relay's limit of {max}")]
    SignalTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
