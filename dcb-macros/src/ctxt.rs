//! Error collection: every problem found while parsing and validating is
//! recorded with its span, and all of them are reported together.

use std::fmt::Display;

use quote::ToTokens;

/// Collects spanned errors so one compile shows every misuse at once.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Vec<syn::Error>,
}

impl Ctxt {
    /// An empty context.
    pub(crate) fn new() -> Self {
        Ctxt::default()
    }

    /// Records an error spanned on `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&mut self, tokens: T, message: M) {
        self.errors.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error spanned on an item's keyword and name (`struct
    /// Cart`): where a derive given the wrong kind of item points.
    pub(crate) fn error_on_item<K: ToTokens, M: Display>(
        &mut self,
        keyword: K,
        ident: &syn::Ident,
        message: M,
    ) {
        self.error_spanned_by(quote::quote!(#keyword #ident), message);
    }

    /// Records an error from syn.
    pub(crate) fn syn_error(&mut self, err: syn::Error) {
        self.errors.push(err);
    }

    /// `Ok` when nothing was recorded, otherwise all the errors combined.
    pub(crate) fn check(self) -> Result<(), syn::Error> {
        let mut errors = self.errors.into_iter();
        match errors.next() {
            None => Ok(()),
            Some(mut first) => {
                for e in errors {
                    first.combine(e);
                }
                Err(first)
            }
        }
    }
}
