//! What a failed command prints and which exit code it returns. Scripts can rely
//! on the codes; people get a message that says what to do next.

use std::process::ExitCode;

use imagestore_client::Error as ClientError;
use tonic::Code;

/// Exit codes, as documented in README and `imagestore --help`.
pub mod exit {
    /// Anything else the server or the system refused.
    pub const FAILED: u8 = 1;
    /// Bad usage or bad input (wrong flag, malformed name or value).
    pub const USAGE: u8 = 2;
    /// The image, alias, remote or file does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// It exists already (an image with the same fingerprint, an alias name).
    pub const EXISTS: u8 = 4;
    /// The server could not be reached or went away; running again resumes.
    pub const UNAVAILABLE: u8 = 5;
    /// Not allowed: the server does not trust this client.
    pub const DENIED: u8 = 6;
    /// Bytes did not match their fingerprint.
    pub const INTEGRITY: u8 = 7;
    /// Interrupted (Ctrl-C), as shells count SIGINT.
    pub const INTERRUPTED: u8 = 130;

    /// The exit code of a failure of kind `code`: one code per kind, whatever
    /// raised it.
    pub fn code_of(code: tonic::Code) -> u8 {
        use tonic::Code;
        match code {
            Code::InvalidArgument | Code::OutOfRange => USAGE,
            Code::NotFound => NOT_FOUND,
            Code::AlreadyExists => EXISTS,
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => UNAVAILABLE,
            Code::PermissionDenied | Code::Unauthenticated => DENIED,
            Code::DataLoss => INTEGRITY,
            _ => FAILED,
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

pub type CliResult<T = ()> = Result<T, Failure>;

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(exit::NOT_FOUND, message)
    }

    /// A transfer failed; when running again would continue it, say so.
    pub fn resumable(e: ClientError, kept: &str) -> Self {
        let transient = e.is_transient();
        let mut failure = Self::from(e);
        if transient {
            failure.message.push_str(&format!(
                "\nNothing is lost: {kept}; run the same command again to continue."
            ));
        }
        failure
    }

    pub fn report(self) -> ExitCode {
        eprintln!("Error: {}", self.message);
        ExitCode::from(self.code)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let mut message = e.to_string();
        let code = match &e {
            ClientError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                exit::NOT_FOUND
            }
            ClientError::Io { .. } => exit::FAILED,
            _ => {
                if e.code() == Code::Unimplemented {
                    message = format!("{message} (this server does not offer it yet)");
                }
                exit::code_of(e.code())
            }
        };
        if let ClientError::Connect { .. } = e {
            message.push_str(
                "\nIs the server running? Start one with `imagestore serve`, or choose another \
                 remote with `imagestore remote switch NAME` or IMAGESTORE_REMOTE.",
            );
        }
        Self { code, message }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        ClientError::from(s).into()
    }
}
