//! Trust for imagestore, with no state of its own: bearer tokens (kept as hashes,
//! sent by [`Bearer`]), certificates known by fingerprint ([`cert`]), the files that hold secrets ([`secret`]), and short-lived
//! tickets signed by the control plane and checked by blob nodes without a
//! database ([`ticket`]).

/// The file, in the control plane's data directory, that holds the credential
/// blob nodes present.
pub const CLUSTER_CREDENTIAL_FILE: &str = "cluster-credential";

pub mod bearer;
pub mod cert;
pub mod secret;
pub mod ticket;

pub use bearer::{Bearer, InvalidToken};
pub use cert::{
    CertError, CertPair, fingerprint_der, fingerprint_pem, load_or_generate, self_signed,
};
pub use secret::{
    create_private_dir, hash_token, load_or_create, new_secret, read_secret, write_private,
};
pub use ticket::{Scope, TICKET_ERROR_METADATA, TicketError, TicketKey};
