//! End-to-end encryption (being built): SFrame, hybrid key agreement, security code.
