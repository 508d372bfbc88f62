//! Administrator policy for E2EE (being built).
