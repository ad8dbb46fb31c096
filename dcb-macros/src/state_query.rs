//! `#[derive(StateQuery)]`: parse the struct into a model, validate it, then
//! generate the `StateQuery` impl.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Token, Type};

use crate::attr::{self, IdContext};
use crate::ctxt::Ctxt;

/// The validated model of a state struct.
struct State<'a> {
    input: &'a DeriveInput,
    /// The event enum or `#[stream]` the state folds.
    stream: Type,
    /// `NAME`.
    name: String,
    /// The `#[id]` fields with their tag keys.
    ids: Vec<(&'a Ident, &'a Type, String)>,
}

/// What `#[state_query(...)]` says.
#[derive(Default)]
struct StateQueryAttr {
    stream: Option<Type>,
    rename: Option<LitStr>,
}

const MISSING: &str = "add `#[state_query(YourEventStream)]` naming the event enum or \
                       `#[stream]` this state folds (optionally `#[state_query(YourEventStream, \
                       rename = \"Name\")]`)";

/// Entry point of `#[derive(StateQuery)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::new();
    let model = parse(&mut cx, input);
    cx.check()?;
    match model {
        Some(model) => Ok(generate(&model)),
        None => Ok(TokenStream::new()),
    }
}

fn parse<'a>(cx: &mut Ctxt, input: &'a DeriveInput) -> Option<State<'a>> {
    const NEEDS: &str = "`#[derive(StateQuery)]` needs a struct with named fields: \
                         `struct MyState { #[id] my_id: String, .. }`";
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(named),
            Fields::Unnamed(unnamed) => {
                cx.error_spanned_by(
                    unnamed,
                    format!("{NEEDS}; a tuple struct has no field names for the tag keys"),
                );
                None
            }
            Fields::Unit => {
                // A unit struct is a state with no ids: it reads every event of
                // its stream. Allowed.
                None
            }
        },
        Data::Enum(e) => {
            cx.error_on_item(
                e.enum_token,
                &input.ident,
                format!("{NEEDS}; an enum cannot be a state (did you mean `#[derive(Event)]`?)"),
            );
            return None;
        }
        Data::Union(u) => {
            cx.error_on_item(u.union_token, &input.ident, NEEDS);
            return None;
        }
    };
    attr::reject_misplaced_id(cx, &input.attrs, "a struct");

    let parsed = parse_attrs(cx, input);

    let mut ids = Vec::new();
    if let Some(fields) = fields {
        for f in &fields.named {
            let Some(ident) = f.ident.as_ref() else {
                continue;
            };
            for a in f.attrs.iter().filter(|a| attr::is(a, "state_query")) {
                cx.error_spanned_by(a, "`#[state_query(..)]` goes on the struct, not on a field");
            }
            if let Some(id) = attr::parse_id_attrs(cx, &f.attrs, ident) {
                if attr::id_shape(cx, &f.ty, IdContext::State).is_some() {
                    ids.push((ident, &f.ty, id.key));
                }
            }
        }
    }

    let stream = match parsed.stream {
        Some(stream) => stream,
        None => {
            cx.error_spanned_by(&input.ident, MISSING);
            return None;
        }
    };
    let name = parsed
        .rename
        .map(|s| s.value())
        .unwrap_or_else(|| input.ident.unraw().to_string());
    Some(State {
        input,
        stream,
        name,
        ids,
    })
}

fn parse_attrs(cx: &mut Ctxt, input: &DeriveInput) -> StateQueryAttr {
    let mut out = StateQueryAttr::default();
    for a in input.attrs.iter().filter(|a| attr::is(a, "state_query")) {
        let list = match &a.meta {
            syn::Meta::List(list) => list,
            _ => {
                cx.error_spanned_by(a, MISSING);
                continue;
            }
        };
        let res =
            (|input: ParseStream<'_>| parse_args(input, &mut out)).parse2(list.tokens.clone());
        if let Err(e) = res {
            cx.syn_error(e);
        }
    }
    out
}

/// `Stream` and `rename = "Name"`, comma separated, in any order.
fn parse_args(input: ParseStream<'_>, out: &mut StateQueryAttr) -> syn::Result<()> {
    if input.is_empty() {
        return Err(input.error(MISSING));
    }
    while !input.is_empty() {
        if input.peek(Ident) && input.peek2(Token![=]) {
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            if key == "rename" {
                let s: LitStr = input.parse()?;
                if s.value().is_empty() {
                    return Err(syn::Error::new_spanned(&s, "a state name cannot be empty"));
                }
                if out.rename.is_some() {
                    return Err(syn::Error::new_spanned(
                        &key,
                        "duplicate `rename`: give the state one name",
                    ));
                }
                out.rename = Some(s);
            } else {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!(
                        "unknown key `{key}` in `#[state_query(...)]`; write \
                         `#[state_query(YourEventStream)]` or \
                         `#[state_query(YourEventStream, rename = \"Name\")]` (valid key: `rename`)"
                    ),
                ));
            }
        } else {
            let ty: Type = input.parse()?;
            if out.stream.is_some() {
                return Err(syn::Error::new_spanned(
                    &ty,
                    "a state folds one event enum or stream: name it once in `#[state_query(..)]`",
                ));
            }
            out.stream = Some(ty);
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(())
}

fn generate(model: &State<'_>) -> TokenStream {
    let ident = &model.input.ident;
    let (impl_generics, ty_generics, where_clause) = model.input.generics.split_for_impl();
    let stream = &model.stream;
    let name = &model.name;
    let tags = model.ids.iter().map(
        |(ident, ty, key)| quote_spanned!(ty.span()=> ::dcb_core::Tag::new(#key, &self.#ident)),
    );
    // A state id whose key no event of the stream carries would filter
    // nothing: the state would read every boundary's events. Refuse it at
    // compile time (for non-generic states, whose stream is a concrete type).
    let key_checks = if model.input.generics.params.is_empty() {
        let checks = model.ids.iter().map(|(field, _, key)| {
            let message = format!(
                "`#[derive(StateQuery)]` on `{ident}`: no event type of the stream carries the \
                 tag key `{key}` (field `{field}`), so this id would select nothing and the \
                 state would read every boundary's events; use the key the events' `#[id]` \
                 fields have (the field name, or `#[id(key = \"..\")]`)"
            );
            quote_spanned! {field.span()=>
                const _: () = {
                    if !::dcb_core::__private::carries_tag_key(
                        <#stream as ::dcb_core::Event>::SCHEMA,
                        #key,
                    ) {
                        ::core::panic!(#message);
                    }
                };
            }
        });
        quote!(#(#checks)*)
    } else {
        TokenStream::new()
    };
    quote! {
        #[automatically_derived]
        impl #impl_generics ::dcb_core::StateQuery for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            type Event = #stream;

            // The tags are spanned on the user's fields (so a missing
            // `Display` points there), which makes clippy see user code.
            #[allow(clippy::needless_borrows_for_generic_args)]
            fn query(&self) -> ::dcb_core::Query {
                ::dcb_core::state_query_for::<#stream>(&[#(#tags),*])
            }
        }

        #key_checks
    }
}
