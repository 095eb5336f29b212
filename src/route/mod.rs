//! Route table and path normalization: pure functions over strings, no hyper, no serde.
//!
//! The proxy runs every request through two steps from here:
//!
//! 1. [`normalize`] turns the request path (query already split off) into the
//!    one spelling that both the gateway matches and the upstream receives,
//!    or rejects it (-> 400). The normal form has no `//`, no dot segments,
//!    no escaped unreserved characters, and upper-case hex in the escapes it
//!    keeps.
//! 2. [`RouteTable::lookup`] finds the most specific route for the method and
//!    the normalized path (`None` -> 404).
//!
//! [`RouteTable::build`] validates and compiles the routes the config layer
//! hands over ([`RouteSpec`]), reporting every bad or conflicting route.
//!
//! # Design decisions
//!
//! - **Specificity** is compared segment by segment from the left: literal
//!   beats `{param}` beats `**`; a longer pattern beats its prefix; for equal
//!   patterns a route that names methods beats one that does not. File order
//!   never matters.
//! - **Exact beats glob on the glob's own prefix**: for the path `/a`, the
//!   route `/a` beats `/a/**` (the `**` matching nothing counts as less
//!   specific than the pattern ending there).
//! - **Method fallback**: a route whose pattern matches but whose methods do
//!   not include the request's is skipped, and the next most specific route
//!   that does allow the method wins (`GET /api/messages` plus `/api/**`:
//!   `POST /api/messages` gets `/api/**`).
//! - **Conflicts**: two routes with equal patterns (equal modulo parameter
//!   names and a trailing slash) conflict when both omit `methods` or some
//!   method is in both (`HEAD` counting under `GET`). A route that omits
//!   `methods` and one that names them do *not* conflict: the contract's
//!   tie-break ("a route that names methods beats one that does not") is
//!   exactly for that pair.
//! - **Methods** are case-sensitive (RFC 9110), so patterns must list them
//!   upper-case; `GET` also covers `HEAD`, `HEAD` does not cover `GET`.
//! - **Escapes in literals**: a literal segment is compared by its
//!   percent-decoded bytes, so the route `/users/@me` also matches
//!   `/users/%40me` and `/caf%C3%A9` matches `/café`. Normalization keeps
//!   escapes of reserved and non-ASCII characters as they are (contract), but
//!   an upstream that decodes its path would see the same resource either
//!   way; without this, the escaped spelling could slip past a strict literal
//!   route to a laxer one. (`%2F` cannot occur: it is rejected.) For the same
//!   reason `/a:b` and `/a%3Ab` are equal patterns.
//! - **Literal segments** of a pattern must already be in normalized form
//!   (`/a%41` or `/a/./b` would never match a normalized path, so they are
//!   load errors rather than dead routes).

mod normalize;
#[cfg(test)]
mod proptests;
mod table;

pub use normalize::{normalize, NormalizeError};
pub use table::{Requirement, Route, RouteError, RouteSpec, RouteTable};
