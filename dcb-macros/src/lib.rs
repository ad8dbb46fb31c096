//! Derive macros for dcb. Use them through `dcb-core`, which re-exports them.
use proc_macro::TokenStream;

/// Implements `dcb_core::Event` for an enum.
#[proc_macro_derive(Event, attributes(event, id, stream))]
pub fn derive_event(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Implements `dcb_core::StateQuery` for a struct.
#[proc_macro_derive(StateQuery, attributes(state_query, id))]
pub fn derive_state_query(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
