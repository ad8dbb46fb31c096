//! `#[derive(Event)]`: parse the enum into a model, validate it, then generate
//! the `Event` impl, the payload shadows and every `#[stream]` sub-enum.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, LitStr, Meta, Token, Type, Visibility};

use crate::attr::{self, IdContext, IdShape, SerdeField};
use crate::ctxt::Ctxt;

/// The validated model of an event enum.
struct EventEnum<'a> {
    ident: &'a Ident,
    vis: &'a Visibility,
    /// The codec type.
    codec: TokenStream,
    variants: Vec<Variant<'a>>,
    streams: Vec<Stream>,
    /// The generated enum of event type names.
    types_ident: Ident,
    /// The generated enum of tag keys.
    tags_ident: Ident,
}

/// One variant: one event type.
struct Variant<'a> {
    ident: &'a Ident,
    /// The stored type name.
    type_name: String,
    /// Older names this variant reads as well.
    aliases: Vec<Alias>,
    docs: Vec<&'a Attribute>,
    /// `A` rather than `A { .. }`.
    unit: bool,
    /// `#[serde(...)]` container attributes for both shadows (`rename_all`,
    /// `deny_unknown_fields`).
    container_serde: Vec<Meta>,
    fields: Vec<Field<'a>>,
}

/// An older stored name of a variant: `#[event(alias = "Old")]`, or
/// `#[event(upcast(from = "Old", with = path))]` when the old payload must be
/// rewritten first.
struct Alias {
    name: LitStr,
    /// `fn(&[u8]) -> Result<Vec<u8>, CodecError>`: the old payload to the
    /// current one.
    upcast: Option<syn::Path>,
}

/// One named field of a variant.
struct Field<'a> {
    ident: &'a Ident,
    ty: &'a Type,
    /// `Some` for `#[id]` fields.
    id: Option<IdShape>,
    /// The tag key of an `#[id]` field.
    key: String,
    docs: Vec<&'a Attribute>,
    serde: SerdeField,
}

/// A `#[stream(Name, [A, B])]`: a sub-enum of some variants.
struct Stream {
    ident: Ident,
    /// Indexes into the parent's variants, in list order.
    variants: Vec<usize>,
}

/// The syntax of one `#[stream(...)]`.
struct StreamAttr {
    ident: Ident,
    variants: Punctuated<Ident, Token![,]>,
}

const STREAM_FORM: &str = "expected `#[stream(Name, [VariantA, VariantB])]`: the name of the \
                           enum to generate, then the variants it holds";

impl Parse for StreamAttr {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let ident: Ident = input.parse()?;
        input.parse::<Token![,]>()?;
        let content;
        syn::bracketed!(content in input);
        let variants = content.parse_terminated(Ident::parse, Token![,])?;
        if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
        }
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the variant list"));
        }
        Ok(StreamAttr { ident, variants })
    }
}

/// Entry point of `#[derive(Event)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::new();
    let model = parse(&mut cx, input);
    cx.check()?;
    match model {
        Some(model) => Ok(generate(&model)),
        None => Ok(TokenStream::new()),
    }
}

fn docs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs.iter().filter(|a| attr::is(a, "doc")).collect()
}

/// The error on a struct or union given `#[derive(Event)]`.
const NEEDS_ENUM: &str = "`#[derive(Event)]` needs an enum: each variant is one event type \
                          (write `enum MyEvents { Happened { .. }, .. }`)";

fn parse<'a>(cx: &mut Ctxt, input: &'a DeriveInput) -> Option<EventEnum<'a>> {
    let data = match &input.data {
        Data::Enum(data) => data,
        Data::Struct(s) => {
            cx.error_on_item(s.struct_token, &input.ident, NEEDS_ENUM);
            return None;
        }
        Data::Union(u) => {
            cx.error_on_item(u.union_token, &input.ident, NEEDS_ENUM);
            return None;
        }
    };
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        cx.error_spanned_by(
            &input.generics,
            "`#[derive(Event)]` does not support generic parameters: events are plain data \
             stored by type name; use concrete field types",
        );
    }
    if data.variants.is_empty() {
        cx.error_spanned_by(
            &input.ident,
            "`#[derive(Event)]` needs at least one variant: each variant is one event type",
        );
    }
    attr::reject_misplaced_id(cx, &input.attrs, "an enum");

    let enum_attrs = parse_enum_event_attrs(cx, &input.attrs);

    let mut variants: Vec<Variant<'a>> = Vec::new();
    for v in &data.variants {
        if let Some(variant) = parse_variant(cx, v) {
            for alias in &variant.aliases {
                let name = alias.name.value();
                let taken = name == variant.type_name
                    || variants.iter().any(|p| {
                        p.type_name == name || p.aliases.iter().any(|a| a.name.value() == name)
                    })
                    || variant
                        .aliases
                        .iter()
                        .filter(|a| a.name.value() == name)
                        .count()
                        > 1;
                if taken {
                    cx.error_spanned_by(
                        &alias.name,
                        format!(
                            "the event type name \"{name}\" is taken: each stored name, alias or \
                             not, belongs to one variant once"
                        ),
                    );
                }
            }
            if let Some(prev) = variants.iter().find(|p| {
                p.aliases
                    .iter()
                    .any(|a| a.name.value() == variant.type_name)
            }) {
                cx.error_spanned_by(
                    v.ident.to_token_stream(),
                    format!(
                        "the event type name \"{}\" is an alias of variant `{}`; give one of \
                         them another name",
                        variant.type_name, prev.ident
                    ),
                );
            }
            if let Some(prev) = variants.iter().find(|p| p.type_name == variant.type_name) {
                let span_of = rename_span(v).unwrap_or_else(|| v.ident.to_token_stream());
                cx.error_spanned_by(
                    span_of,
                    format!(
                        "duplicate event type name \"{}\" (variant `{}` is already stored under \
                         it); give one of them another name with `#[event(rename = \"...\")]`",
                        variant.type_name, prev.ident
                    ),
                );
            }
            variants.push(variant);
        }
    }

    let streams = parse_streams(cx, input, data);

    check_tag_variants(cx, input, &variants);

    Some(EventEnum {
        ident: &input.ident,
        vis: &input.vis,
        codec: enum_attrs
            .codec
            .unwrap_or_else(|| quote!(::dcb_core::JsonCodec)),
        variants,
        streams,
        types_ident: enum_attrs
            .types
            .unwrap_or_else(|| format_ident!("{}Type", input.ident)),
        tags_ident: enum_attrs
            .tags
            .unwrap_or_else(|| format_ident!("{}Tag", input.ident)),
    })
}

/// The tokens of the `rename = "..."` value of a variant, for error spans.
fn rename_span(v: &syn::Variant) -> Option<TokenStream> {
    let mut found = None;
    for a in v.attrs.iter().filter(|a| attr::is(a, "event")) {
        let _ = a.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                if let Ok(s) = attr::lit_str(&meta) {
                    found = Some(s.to_token_stream());
                }
            }
            Ok(())
        });
    }
    found
}

/// What `#[event(...)]` says on the enum.
#[derive(Default)]
struct EnumAttrs {
    codec: Option<TokenStream>,
    /// The name of the generated event-type enum.
    types: Option<Ident>,
    /// The name of the generated tag-key enum.
    tags: Option<Ident>,
}

const ENUM_KEYS: &str = "the valid keys are: `codec` (e.g. `#[event(codec = MyCodec)]`), \
                         `types` and `tags` (names of the generated enums of event types and \
                         tag keys, e.g. `#[event(types = CartTypes)]`)";

/// `#[event(codec = path::To::Codec, types = Name, tags = Name)]` on the enum.
fn parse_enum_event_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> EnumAttrs {
    let mut out = EnumAttrs::default();
    for a in attrs.iter().filter(|a| attr::is(a, "event")) {
        let res = a.parse_nested_meta(|meta| {
            if meta.path.is_ident("codec") {
                let value = meta.value()?;
                let ty: Type = if value.peek(LitStr) {
                    value.parse::<LitStr>()?.parse()?
                } else {
                    value.parse()?
                };
                if out.codec.is_some() {
                    return Err(meta.error("duplicate `codec`: choose one codec per enum"));
                }
                out.codec = Some(ty.to_token_stream());
                Ok(())
            } else if meta.path.is_ident("types") || meta.path.is_ident("tags") {
                let ident: Ident = meta.value()?.parse()?;
                let slot = if meta.path.is_ident("types") {
                    &mut out.types
                } else {
                    &mut out.tags
                };
                if slot.is_some() {
                    return Err(meta.error("duplicate key: name each generated enum once"));
                }
                *slot = Some(ident);
                Ok(())
            } else if meta.path.is_ident("rename") {
                Err(meta.error(
                    "`rename` goes on a variant (`#[event(rename = \"Name\")]` names one event \
                     type); on the enum, "
                        .to_string()
                        + ENUM_KEYS,
                ))
            } else {
                Err(meta.error(format!(
                    "unknown key `{}` in `#[event(...)]` on an enum; {ENUM_KEYS}",
                    meta.path.to_token_stream()
                )))
            }
        });
        if let Err(e) = res {
            cx.syn_error(e);
        }
    }
    out
}

/// Every tag key must map to its own variant of the tag-key enum.
fn check_tag_variants(cx: &mut Ctxt, input: &DeriveInput, variants: &[Variant<'_>]) {
    let mut seen: Vec<(String, String)> = Vec::new();
    for f in variants.iter().flat_map(|v| &v.fields) {
        if f.id.is_none() {
            continue;
        }
        let name = attr::key_variant(&f.key);
        match seen.iter().find(|(n, _)| *n == name) {
            Some((_, key)) if *key != f.key => cx.error_spanned_by(
                f.ident,
                format!(
                    "tag keys `{key}` and `{}` of `{}` both name `{name}` in the generated enum \
                     of tag keys: spell them alike, or give one another key with \
                     `#[id(key = \"..\")]`",
                    f.key, input.ident
                ),
            ),
            Some(_) => {}
            None if name.is_empty() || !name.starts_with(|c: char| c.is_alphabetic()) => cx
                .error_spanned_by(
                    f.ident,
                    format!(
                        "tag key `{}` does not make a type name; give it a key that starts \
                         with a letter with `#[id(key = \"..\")]`",
                        f.key
                    ),
                ),
            None => seen.push((name, f.key.clone())),
        }
    }
}

const VARIANT_KEYS: &str = "the valid keys are: `rename` (the stored type name, e.g. \
                            `#[event(rename = \"CartCreated\")]`), `alias` (an older name this \
                            variant also reads, e.g. `#[event(alias = \"Created\")]`) and `upcast` \
                            (an older name whose payload a function rewrites first, e.g. \
                            `#[event(upcast(from = \"MoneyDeposited\", with = deposit_v1))]`)";

const UPCAST_FORM: &str = "expected `upcast(from = \"OldName\", with = path::to::function)`, \
                           the function taking the old payload (`&[u8]`) and returning the \
                           current one (`Result<Vec<u8>, dcb_core::CodecError>`)";

fn parse_variant<'a>(cx: &mut Ctxt, v: &'a syn::Variant) -> Option<Variant<'a>> {
    attr::reject_misplaced_id(cx, &v.attrs, "a variant");
    for a in v.attrs.iter().filter(|a| attr::is(a, "stream")) {
        cx.error_spanned_by(
            a,
            "`#[stream(Name, [VariantA, VariantB])]` goes on the enum, not on a variant",
        );
    }

    let mut rename: Option<LitStr> = None;
    let mut aliases: Vec<Alias> = Vec::new();
    for a in v.attrs.iter().filter(|a| attr::is(a, "event")) {
        let res = a.parse_nested_meta(|meta| {
            if meta.path.is_ident("alias") {
                let s = attr::lit_str(&meta)?;
                if s.value().is_empty() {
                    return Err(syn::Error::new_spanned(&s, "an event type name cannot be empty"));
                }
                aliases.push(Alias {
                    name: s,
                    upcast: None,
                });
                Ok(())
            } else if meta.path.is_ident("upcast") {
                let mut from: Option<LitStr> = None;
                let mut with: Option<syn::Path> = None;
                meta.parse_nested_meta(|inner| {
                    if inner.path.is_ident("from") {
                        from = Some(attr::lit_str(&inner)?);
                        Ok(())
                    } else if inner.path.is_ident("with") {
                        with = Some(inner.value()?.parse()?);
                        Ok(())
                    } else {
                        Err(inner.error(UPCAST_FORM))
                    }
                })?;
                match (from, with) {
                    (Some(name), Some(path)) if !name.value().is_empty() => {
                        aliases.push(Alias {
                            name,
                            upcast: Some(path),
                        });
                        Ok(())
                    }
                    _ => Err(meta.error(UPCAST_FORM)),
                }
            } else if meta.path.is_ident("rename") {
                let s = attr::lit_str(&meta)?;
                if s.value().is_empty() {
                    return Err(syn::Error::new_spanned(
                        &s,
                        "an event type name cannot be empty",
                    ));
                }
                if rename.is_some() {
                    return Err(meta.error("duplicate `rename`: give each event type one name"));
                }
                rename = Some(s);
                Ok(())
            } else if meta.path.is_ident("codec") {
                Err(meta.error(format!(
                    "`codec` goes on the enum (all variants share one codec); on a variant {VARIANT_KEYS}"
                )))
            } else {
                Err(meta.error(format!(
                    "unknown key `{}` in `#[event(...)]` on a variant; {VARIANT_KEYS}",
                    meta.path.to_token_stream()
                )))
            }
        });
        if let Err(e) = res {
            cx.syn_error(e);
        }
    }

    let container_serde = parse_variant_serde(v);

    let (unit, fields) = match &v.fields {
        Fields::Unit => (true, Vec::new()),
        Fields::Named(named) => {
            let fields = named
                .named
                .iter()
                .filter_map(|f| parse_field(cx, f))
                .collect();
            (false, fields)
        }
        Fields::Unnamed(unnamed) => {
            cx.error_spanned_by(
                unnamed,
                format!(
                    "event variants need named fields, not a tuple: the field names are the \
                     payload's keys; write `{} {{ name: Type, .. }}`",
                    v.ident
                ),
            );
            return None;
        }
    };

    Some(Variant {
        ident: &v.ident,
        type_name: rename
            .map(|s| s.value())
            .unwrap_or_else(|| v.ident.unraw().to_string()),
        aliases,
        docs: docs(&v.attrs),
        unit,
        container_serde,
        fields,
    })
}

/// Variant-level `#[serde(rename_all = "..", deny_unknown_fields)]` apply to
/// the payload; any other variant-level serde keys belong to the user's own
/// serde derive (if any) and are left alone.
fn parse_variant_serde(v: &syn::Variant) -> Vec<Meta> {
    let mut out = Vec::new();
    for a in v.attrs.iter().filter(|a| attr::is(a, "serde")) {
        if let Ok(metas) = a.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            out.extend(metas.into_iter().filter(|m| {
                m.path().is_ident("rename_all") || m.path().is_ident("deny_unknown_fields")
            }));
        }
    }
    out
}

fn parse_field<'a>(cx: &mut Ctxt, f: &'a syn::Field) -> Option<Field<'a>> {
    let ident = f.ident.as_ref()?;
    for a in f
        .attrs
        .iter()
        .filter(|a| attr::is(a, "event") || attr::is(a, "stream"))
    {
        cx.error_spanned_by(
            a,
            "this attribute does not go on a field: `#[event(codec = ..)]` and `#[stream(..)]` \
             go on the enum, `#[event(rename = \"..\")]` on a variant; fields take `#[id]` and \
             `#[serde(..)]`",
        );
    }
    let id_attr = attr::parse_id_attrs(cx, &f.attrs, ident);
    let id = if id_attr.is_some() {
        attr::id_shape(cx, &f.ty, IdContext::Event)
    } else {
        None
    };
    let serde = attr::parse_serde_field(cx, &f.attrs);
    Some(Field {
        ident,
        ty: &f.ty,
        id,
        key: id_attr.map(|a| a.key).unwrap_or_default(),
        docs: docs(&f.attrs),
        serde,
    })
}

fn parse_streams(cx: &mut Ctxt, input: &DeriveInput, data: &syn::DataEnum) -> Vec<Stream> {
    let names: Vec<String> = data.variants.iter().map(|v| v.ident.to_string()).collect();
    let mut streams = Vec::new();
    for a in input.attrs.iter().filter(|a| attr::is(a, "stream")) {
        let parsed = match &a.meta {
            Meta::List(list) => list
                .parse_args_with(StreamAttr::parse)
                .map_err(|e| syn::Error::new(e.span(), format!("{STREAM_FORM} ({e})"))),
            _ => Err(syn::Error::new_spanned(a, STREAM_FORM)),
        };
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                cx.syn_error(e);
                continue;
            }
        };
        if parsed.variants.is_empty() {
            cx.error_spanned_by(
                a,
                format!("{STREAM_FORM}; the variant list is empty, name at least one variant"),
            );
            continue;
        }
        let mut indexes = Vec::new();
        for name in &parsed.variants {
            match names.iter().position(|n| name == n) {
                Some(i) if indexes.contains(&i) => cx.error_spanned_by(
                    name,
                    format!("variant `{name}` is listed twice in this `#[stream]`"),
                ),
                Some(i) => indexes.push(i),
                None => cx.error_spanned_by(
                    name,
                    format!(
                        "no variant `{name}` in `{}`; its variants are: {}",
                        input.ident,
                        names.join(", ")
                    ),
                ),
            }
        }
        if parsed.ident == input.ident {
            cx.error_spanned_by(
                &parsed.ident,
                "the stream needs its own name, different from the enum's",
            );
        }
        if let Some(prev) = streams.iter().find(|s: &&Stream| s.ident == parsed.ident) {
            cx.error_spanned_by(
                &parsed.ident,
                format!("duplicate stream name `{}`", prev.ident),
            );
        }
        streams.push(Stream {
            ident: parsed.ident,
            variants: indexes,
        });
    }
    streams
}

// ---------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------

fn ser_ident(i: usize) -> Ident {
    format_ident!("__DcbSer{}", i)
}

fn de_ident(i: usize) -> Ident {
    format_ident!("__DcbDe{}", i)
}

fn binding(i: usize) -> Ident {
    format_ident!("__dcb_f{}", i)
}

fn generate(model: &EventEnum<'_>) -> TokenStream {
    let shadows = model
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| gen_shadows(i, v));

    let all: Vec<usize> = (0..model.variants.len()).collect();
    let parent_impl = gen_event_impl(model, model.ident, &all);

    let mut stream_defs = Vec::new();
    let mut stream_impls = Vec::new();
    for stream in &model.streams {
        stream_defs.push(gen_stream_enum(model, stream));
        stream_impls.push(gen_event_impl(model, &stream.ident, &stream.variants));
        stream_impls.push(gen_conversions(model, stream));
    }

    let type_enum = gen_type_enum(model);
    let tag_enum = gen_tag_enum(model);

    quote! {
        #type_enum
        #tag_enum
        #(#stream_defs)*

        #[doc(hidden)]
        #[allow(non_camel_case_types, non_snake_case, clippy::all, clippy::pedantic)]
        const _: () = {
            #(#shadows)*
            #parent_impl
            #(#stream_impls)*
        };
    }
}

/// The enum of the parent's event types (`CartEventType::CartCreated`), so
/// queries name types the compiler checks instead of strings.
fn gen_type_enum(model: &EventEnum<'_>) -> TokenStream {
    let vis = model.vis;
    let ident = &model.types_ident;
    let parent = model.ident;
    let private = quote!(::dcb_core::__private);
    let doc = format!(
        " The event types of [`{parent}`], one per variant: use them where a query or a \
         listener names event types (`Query::types([{ident}::..])`), so that a misspelt type \
         is a compile error. Generated by `#[derive(Event)]`."
    );
    let vidents: Vec<&Ident> = model.variants.iter().map(|v| v.ident).collect();
    let names: Vec<&String> = model.variants.iter().map(|v| &v.type_name).collect();
    let docs = model
        .variants
        .iter()
        .map(|v| format!(" [`{parent}::{}`], stored as `{}`.", v.ident, v.type_name));
    let derives = fieldless_enum_derives();
    quote! {
        #[doc = #doc]
        #derives
        // Generated for every event enum, used or not.
        #[allow(dead_code, clippy::enum_variant_names)]
        #vis enum #ident {
            #(#[doc = #docs] #vidents),*
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #ident {
            /// Every event type, in declaration order.
            pub const ALL: &'static [#ident] = &[#(#ident::#vidents),*];

            /// The stored type name.
            pub const fn as_str(self) -> &'static str {
                match self { #(#ident::#vidents => #names),* }
            }

            /// The stored type name as an [`EventType`](::dcb_core::EventType).
            pub const fn event_type(self) -> ::dcb_core::EventType {
                ::dcb_core::EventType::from_static(self.as_str())
            }
        }

        #[automatically_derived]
        impl #private::std::convert::From<#ident> for ::dcb_core::EventType {
            fn from(event_type: #ident) -> Self {
                event_type.event_type()
            }
        }

        #[automatically_derived]
        impl #private::std::fmt::Display for #ident {
            fn fmt(&self, f: &mut #private::std::fmt::Formatter<'_>) -> #private::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    }
}

/// `#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]`, through the std
/// that dcb-core re-exports, for the generated fieldless enums (event types,
/// tag keys).
fn fieldless_enum_derives() -> TokenStream {
    quote! {
        #[derive(
            ::dcb_core::__private::std::clone::Clone,
            ::dcb_core::__private::std::marker::Copy,
            ::dcb_core::__private::std::fmt::Debug,
            ::dcb_core::__private::std::cmp::PartialEq,
            ::dcb_core::__private::std::cmp::Eq,
            ::dcb_core::__private::std::hash::Hash
        )]
    }
}

/// The enum of the parent's tag keys (`CartEventTag::CartId`), so queries
/// build tags the compiler checks: `CartEventTag::CartId.of(id)`.
fn gen_tag_enum(model: &EventEnum<'_>) -> TokenStream {
    let vis = model.vis;
    let ident = &model.tags_ident;
    let parent = model.ident;
    let doc = format!(
        " The tag keys of [`{parent}`] (from its `#[id]` fields): build query tags with \
         `{ident}::Key.of(value)`, so that a misspelt key is a compile error. Generated by \
         `#[derive(Event)]`."
    );
    let mut keys: Vec<&str> = Vec::new();
    for f in model.variants.iter().flat_map(|v| &v.fields) {
        if f.id.is_some() && !keys.contains(&f.key.as_str()) {
            keys.push(&f.key);
        }
    }
    let vidents: Vec<Ident> = keys
        .iter()
        .map(|k| Ident::new(&attr::key_variant(k), Span::call_site()))
        .collect();
    let docs = keys.iter().map(|k| format!(" The tag key `{k}`."));
    let derives = fieldless_enum_derives();
    quote! {
        #[doc = #doc]
        #derives
        #[allow(dead_code)]
        #vis enum #ident {
            #(#[doc = #docs] #vidents),*
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #ident {
            /// Every tag key, in the order the enum first uses them.
            pub const ALL: &'static [#ident] = &[#(#ident::#vidents),*];

            /// The key.
            pub const fn key(self) -> &'static str {
                match self { #(#ident::#vidents => #keys),* }
            }

            /// The tag `key:value`.
            pub fn of(self, value: impl ::dcb_core::__private::std::fmt::Display) -> ::dcb_core::Tag {
                ::dcb_core::Tag::new(self.key(), value)
            }
        }
    }
}

/// The two payload shadows of variant `i`: a borrowing one that serializes
/// and an owned one that deserializes, plus adapters for user functions that
/// receive a field.
fn gen_shadows(i: usize, v: &Variant<'_>) -> TokenStream {
    let ser = ser_ident(i);
    let de = de_ident(i);
    let type_name = &v.type_name;
    let container = attr::serde_attr(&v.container_serde);
    let serde_crate = quote!(#[serde(crate = "::dcb_core::__private::serde", rename = #type_name)]);
    let serde_path = quote!(::dcb_core::__private::serde);

    let mut adapters = Vec::new();
    let mut ser_fields = Vec::new();
    let mut de_fields = Vec::new();
    for (fi, f) in v.fields.iter().enumerate() {
        let ident = f.ident;
        let ty = f.ty;
        let mut ser_metas = f.serde.ser.clone();
        if let Some(path) = &f.serde.serialize_with {
            let adapter = format_ident!("__dcb_ser_{}_{}", i, fi);
            let name = LitStr::new(&adapter.to_string(), Span::call_site());
            ser_metas.push(syn::parse_quote!(serialize_with = #name));
            adapters.push(quote_spanned! {path.span()=>
                fn #adapter<__S: #serde_path::Serializer>(
                    __v: &&#ty,
                    __s: __S,
                ) -> ::dcb_core::__private::std::result::Result<__S::Ok, __S::Error> {
                    #path(*__v, __s)
                }
            });
        }
        if let Some(path) = &f.serde.skip_serializing_if {
            let adapter = format_ident!("__dcb_skip_{}_{}", i, fi);
            let name = LitStr::new(&adapter.to_string(), Span::call_site());
            ser_metas.push(syn::parse_quote!(skip_serializing_if = #name));
            adapters.push(quote_spanned! {path.span()=>
                fn #adapter(__v: &&#ty) -> bool {
                    #path(*__v)
                }
            });
        }
        let ser_attr = attr::serde_attr(&ser_metas);
        let de_attr = attr::serde_attr(&f.serde.de);
        ser_fields.push(quote!(#ser_attr #ident: &'__dcb #ty));
        de_fields.push(quote!(#de_attr #ident: #ty));
    }

    let ser_generics = if v.fields.is_empty() {
        TokenStream::new()
    } else {
        quote!(<'__dcb>)
    };

    quote! {
        #(#adapters)*

        #[derive(#serde_path::Serialize)]
        #serde_crate
        #container
        struct #ser #ser_generics { #(#ser_fields,)* }

        #[derive(#serde_path::Deserialize)]
        #serde_crate
        #container
        struct #de { #(#de_fields,)* }
    }
}

/// The `Event` impl of `ident` holding the parent's `variants` (by index).
fn gen_event_impl(model: &EventEnum<'_>, ident: &Ident, variants: &[usize]) -> TokenStream {
    let codec = &model.codec;
    let private = quote!(::dcb_core::__private);
    let codec_trait = quote_spanned!(codec.span()=> <#codec as ::dcb_core::Codec>);

    let mut schema = Vec::new();
    let mut type_arms = Vec::new();
    let mut tag_arms = Vec::new();
    let mut encode_arms = Vec::new();
    let mut decode_arms = Vec::new();

    for &i in variants {
        let Some(v) = model.variants.get(i) else {
            continue;
        };
        let vident = v.ident;
        let type_name = &v.type_name;
        let mut keys: Vec<&str> = Vec::new();
        for f in v.fields.iter().filter(|f| f.id.is_some()) {
            if !keys.contains(&f.key.as_str()) {
                keys.push(&f.key);
            }
        }
        schema.push(quote! {
            ::dcb_core::EventSchema { event_type: #type_name, tag_keys: &[#(#keys),*] }
        });
        for alias in &v.aliases {
            let name = &alias.name;
            schema.push(quote! {
                ::dcb_core::EventSchema { event_type: #name, tag_keys: &[#(#keys),*] }
            });
            decode_arms.push(match &alias.upcast {
                None => quote! {
                    #name => <Self as ::dcb_core::Event>::decode(#type_name, payload),
                },
                Some(path) => quote_spanned! {path.span()=>
                    #name => {
                        let __upcast: #private::std::vec::Vec<u8> = #path(payload)?;
                        <Self as ::dcb_core::Event>::decode(#type_name, &__upcast)
                    }
                },
            });
        }

        let idents: Vec<&Ident> = v.fields.iter().map(|f| f.ident).collect();
        let bindings: Vec<Ident> = (0..v.fields.len()).map(binding).collect();
        let pattern = if v.unit {
            quote!(Self::#vident)
        } else {
            quote!(Self::#vident { #(#idents: #bindings),* })
        };
        let rest_pattern = if v.unit {
            quote!(Self::#vident)
        } else {
            quote!(Self::#vident { .. })
        };

        type_arms.push(quote! {
            #rest_pattern => ::dcb_core::EventType::from_static(#type_name),
        });

        let id_fields: Vec<(usize, &Field<'_>)> = v
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.id.is_some())
            .collect();
        if id_fields.is_empty() {
            tag_arms.push(quote!(#rest_pattern => {}));
        } else {
            let id_pattern = {
                let ids = id_fields.iter().map(|(_, f)| f.ident);
                let binds = id_fields.iter().map(|(fi, _)| binding(*fi));
                quote!(Self::#vident { #(#ids: #binds,)* .. })
            };
            let pushes = id_fields.iter().map(|(fi, f)| {
                // Located at the field type so "doesn't implement `Display`"
                // points at the user's field.
                let mut b = binding(*fi);
                b.set_span(f.ty.span());
                let key = &f.key;
                let span = f.ty.span();
                match f.id {
                    Some(IdShape::Optional) => quote_spanned! {span=>
                        if let #private::std::option::Option::Some(__v) = #b {
                            __tags.push(::dcb_core::Tag::new(#key, __v));
                        }
                    },
                    Some(IdShape::Many) => quote_spanned! {span=>
                        for __v in #b {
                            __tags.push(::dcb_core::Tag::new(#key, __v));
                        }
                    },
                    _ => quote_spanned! {span=>
                        __tags.push(::dcb_core::Tag::new(#key, #b));
                    },
                }
            });
            tag_arms.push(quote!(#id_pattern => { #(#pushes)* }));
        }

        let ser = ser_ident(i);
        let de = de_ident(i);
        encode_arms.push(quote! {
            #pattern => #codec_trait::encode(&#ser { #(#idents: #bindings),* }),
        });

        if v.unit || v.fields.is_empty() {
            decode_arms.push(quote! {
                #type_name => {
                    let __t = payload.trim_ascii();
                    if !(__t.is_empty() || __t == b"null") {
                        let _: #de = #codec_trait::decode(payload)?;
                    }
                    #private::std::result::Result::Ok(#pattern)
                }
            });
        } else {
            decode_arms.push(quote! {
                #type_name => {
                    let __p: #de = #codec_trait::decode(payload)?;
                    #private::std::result::Result::Ok(Self::#vident { #(#idents: __p.#idents),* })
                }
            });
        }
    }

    quote! {
        #[automatically_derived]
        impl ::dcb_core::Event for #ident {
            const SCHEMA: &'static [::dcb_core::EventSchema] = &[#(#schema),*];

            fn event_type(&self) -> ::dcb_core::EventType {
                match self { #(#type_arms)* }
            }

            fn tags(&self) -> #private::std::vec::Vec<::dcb_core::Tag> {
                #[allow(unused_mut)]
                let mut __tags: #private::std::vec::Vec<::dcb_core::Tag> =
                    #private::std::vec::Vec::new();
                match self { #(#tag_arms)* }
                __tags
            }

            fn encode(&self) -> #private::std::result::Result<
                #private::std::vec::Vec<u8>,
                ::dcb_core::CodecError,
            > {
                match self { #(#encode_arms)* }
            }

            fn decode(
                event_type: &str,
                payload: &[u8],
            ) -> #private::std::result::Result<Self, ::dcb_core::CodecError> {
                match event_type {
                    #(#decode_arms)*
                    _ => #private::std::result::Result::Err(
                        ::dcb_core::CodecError::UnknownType(
                            #private::std::string::ToString::to_string(event_type),
                        ),
                    ),
                }
            }
        }
    }
}

/// The definition of a `#[stream]` sub-enum.
fn gen_stream_enum(model: &EventEnum<'_>, stream: &Stream) -> TokenStream {
    let vis = model.vis;
    let ident = &stream.ident;
    let parent = model.ident;
    let names: Vec<String> = stream
        .variants
        .iter()
        .filter_map(|&i| model.variants.get(i))
        .map(|v| format!("`{}`", v.ident))
        .collect();
    let doc = format!(
        " The events of [`{parent}`] in the stream `{ident}`: {}.",
        names.join(", ")
    );
    let doc2 = format!(
        " Generated by `#[stream({ident}, [..])]` on `{parent}`: each variant has the same \
         fields, type name, tags and payload as in `{parent}`. Convert with `From<{ident}>` \
         for `{parent}` and `TryFrom<{parent}>` (which gives the event back when it is not in \
         this stream)."
    );
    let variants = stream
        .variants
        .iter()
        .filter_map(|&i| model.variants.get(i))
        .map(|v| {
            let vident = v.ident;
            let docs = &v.docs;
            if v.unit {
                quote!(#(#docs)* #vident)
            } else {
                let fields = v.fields.iter().map(|f| {
                    let fdocs = &f.docs;
                    let fident = f.ident;
                    let ty = f.ty;
                    quote!(#(#fdocs)* #fident: #ty)
                });
                quote!(#(#docs)* #vident { #(#fields),* })
            }
        });
    quote! {
        #[doc = #doc]
        #[doc = ""]
        #[doc = #doc2]
        // The variant names are the parent's: lints about them belong there.
        #[allow(clippy::enum_variant_names)]
        #[derive(
            ::dcb_core::__private::std::fmt::Debug,
            ::dcb_core::__private::std::clone::Clone
        )]
        #vis enum #ident {
            #(#variants),*
        }
    }
}

/// `From<Stream> for Parent` and `TryFrom<Parent> for Stream`.
fn gen_conversions(model: &EventEnum<'_>, stream: &Stream) -> TokenStream {
    let parent = model.ident;
    let ident = &stream.ident;
    let private = quote!(::dcb_core::__private);
    let mut into_parent = Vec::new();
    let mut from_parent = Vec::new();
    for v in stream
        .variants
        .iter()
        .filter_map(|&i| model.variants.get(i))
    {
        let vident = v.ident;
        if v.unit {
            into_parent.push(quote!(#ident::#vident => #parent::#vident,));
            from_parent.push(quote!(
                #parent::#vident => #private::std::result::Result::Ok(#ident::#vident),
            ));
        } else {
            let idents: Vec<&Ident> = v.fields.iter().map(|f| f.ident).collect();
            let bindings: Vec<Ident> = (0..v.fields.len()).map(binding).collect();
            into_parent.push(quote!(
                #ident::#vident { #(#idents: #bindings),* } =>
                    #parent::#vident { #(#idents: #bindings),* },
            ));
            from_parent.push(quote!(
                #parent::#vident { #(#idents: #bindings),* } =>
                    #private::std::result::Result::Ok(#ident::#vident { #(#idents: #bindings),* }),
            ));
        }
    }
    quote! {
        #[automatically_derived]
        impl #private::std::convert::From<#ident> for #parent {
            fn from(event: #ident) -> Self {
                match event { #(#into_parent)* }
            }
        }

        #[automatically_derived]
        impl #private::std::convert::TryFrom<#parent> for #ident {
            type Error = #parent;

            #[allow(unreachable_patterns)]
            fn try_from(event: #parent) -> #private::std::result::Result<Self, #parent> {
                match event {
                    #(#from_parent)*
                    other => #private::std::result::Result::Err(other),
                }
            }
        }
    }
}
