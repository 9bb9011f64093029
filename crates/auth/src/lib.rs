//! Trust for imagestore, with no state of its own: bearer tokens and the files
//! that hold secrets ([`secret`]), and short-lived tickets signed by the control
//! plane and checked by blob nodes without a database ([`ticket`]).

pub mod secret;
pub mod ticket;

pub use secret::{hash_token, load_or_create, new_secret, read_secret, write_private};
pub use ticket::{Scope, TicketError, TicketKey};
