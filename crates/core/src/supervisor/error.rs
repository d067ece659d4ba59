//! Why a command about apps cannot be carried out. Each variant is one kind of refusal and its
//! message names the problem and the fix; `control.rs` turns it into the client's reply, the
//! only place where replies are made.

use herd_proto::{ErrorCode, Reply};

/// A command refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The request makes no sense (e.g. `scale all`).
    #[error("{0}")]
    BadRequest(String),
    /// A message is larger than the bus allows.
    #[error("{0}")]
    TooLarge(String),
    /// No app matches the target.
    #[error("{0}")]
    UnknownApp(String),
    /// An app of that name exists already.
    #[error("{0}")]
    NameTaken(String),
    /// The spec cannot be run.
    #[error("{0}")]
    InvalidSpec(String),
    /// A listening address cannot be bound.
    #[error("{0}")]
    Listen(String),
    /// A reload stopped; the old processes keep serving.
    #[error("{0}")]
    ReloadFailed(String),
    /// The program cannot be started.
    #[error("{0}")]
    Spawn(String),
    /// The daemon is shutting down.
    #[error("{0}")]
    ShuttingDown(String),
    /// No running instance matches the address.
    #[error("{0}")]
    NoRecipient(String),
    /// The instances addressed did not take the message.
    #[error("{0}")]
    QueueFull(String),
    /// A request got no reply in time.
    #[error("{0}")]
    Timeout(String),
    /// The daemon is busy with an update; the command can be sent again.
    #[error("{0}")]
    Busy(String),
    /// `herd update` failed; the running daemon goes on.
    #[error("{0}")]
    Update(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl CommandError {
    /// The refusal of kind `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let m = message.into();
        match code {
            ErrorCode::BadRequest | ErrorCode::Version => Self::BadRequest(m),
            ErrorCode::TooLarge => Self::TooLarge(m),
            ErrorCode::UnknownApp => Self::UnknownApp(m),
            ErrorCode::NameTaken => Self::NameTaken(m),
            ErrorCode::InvalidSpec => Self::InvalidSpec(m),
            ErrorCode::Listen => Self::Listen(m),
            ErrorCode::ReloadFailed => Self::ReloadFailed(m),
            ErrorCode::Spawn => Self::Spawn(m),
            ErrorCode::ShuttingDown => Self::ShuttingDown(m),
            ErrorCode::NoRecipient => Self::NoRecipient(m),
            ErrorCode::QueueFull => Self::QueueFull(m),
            ErrorCode::Timeout => Self::Timeout(m),
            ErrorCode::Busy => Self::Busy(m),
            ErrorCode::Update => Self::Update(m),
            ErrorCode::Internal => Self::Internal(m),
        }
    }

    /// Its code on the wire.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::UnknownApp(_) => ErrorCode::UnknownApp,
            Self::NameTaken(_) => ErrorCode::NameTaken,
            Self::InvalidSpec(_) => ErrorCode::InvalidSpec,
            Self::Listen(_) => ErrorCode::Listen,
            Self::ReloadFailed(_) => ErrorCode::ReloadFailed,
            Self::Spawn(_) => ErrorCode::Spawn,
            Self::ShuttingDown(_) => ErrorCode::ShuttingDown,
            Self::NoRecipient(_) => ErrorCode::NoRecipient,
            Self::QueueFull(_) => ErrorCode::QueueFull,
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::Busy(_) => ErrorCode::Busy,
            Self::Update(_) => ErrorCode::Update,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<CommandError> for Reply {
    fn from(e: CommandError) -> Self {
        Reply::error(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_but_version_round_trips() {
        let codes = [
            ErrorCode::BadRequest,
            ErrorCode::TooLarge,
            ErrorCode::UnknownApp,
            ErrorCode::NameTaken,
            ErrorCode::InvalidSpec,
            ErrorCode::Listen,
            ErrorCode::ReloadFailed,
            ErrorCode::Spawn,
            ErrorCode::ShuttingDown,
            ErrorCode::NoRecipient,
            ErrorCode::QueueFull,
            ErrorCode::Timeout,
            ErrorCode::Busy,
            ErrorCode::Update,
            ErrorCode::Internal,
        ];
        for c in codes {
            let e = CommandError::new(c, "why; fix");
            assert_eq!(e.code(), c);
            assert_eq!(
                Reply::from(e),
                Reply::error(c, "why; fix"),
                "{c:?} changes on the way to the reply"
            );
        }
    }
}

/// Why a slot's process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The program cannot be found or run; the message names the fix.
    #[error("{0}")]
    Program(String),
    /// A pipe, the channel's socket pair or `/dev/null` could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being made.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// `fork` or `exec` failed.
    #[error(transparent)]
    Spawn(#[from] crate::spawn::SpawnError),
    /// The app or slot went away meanwhile.
    #[error("{0} went away")]
    Gone(String),
}

impl StartError {
    /// An I/O failure while making `what`.
    pub(super) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}
