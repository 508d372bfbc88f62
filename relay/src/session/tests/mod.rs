//! Unit tests of the session core, one file per concern, driven by hand without sockets.

mod control;
mod drain;
mod pairing;
mod testing;
