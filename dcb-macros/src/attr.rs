//! Attribute parsing shared by both derives: `#[id]` fields and their types,
//! `#[serde(...)]` field attributes (split between the two payload shadows),
//! and small helpers.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, ExprPath, Ident, Lit, LitStr, Meta, Token, Type};

use crate::ctxt::Ctxt;

/// How an `#[id]` field turns into tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdShape {
    /// Any displayable type: exactly one tag.
    One,
    /// `Option<T>`: zero or one tag.
    Optional,
    /// `Vec<T>`: one tag per element.
    Many,
}

/// Where an `#[id]` is used: events may carry optional or repeated ids,
/// states may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdContext {
    /// A field of an event variant.
    Event,
    /// A field of a state struct.
    State,
}

/// Whether `attr` is `#[<name>...]`.
pub(crate) fn is(attr: &Attribute, name: &str) -> bool {
    attr.path().is_ident(name)
}

/// What an `#[id]` attribute says: the field is an id, tagged under `key`
/// (the field name unless `#[id(key = "..")]` says otherwise).
pub(crate) struct IdAttr {
    /// The tag key.
    pub(crate) key: String,
}

const ID_FORM: &str = "write `#[id]` (the tag key is the field name) or \
                       `#[id(key = \"account\")]` (another key, e.g. when two fields \
                       of one event tag the same key); the tag value is the field's \
                       `Display` output";

/// Finds the `#[id]` attributes of a field named `field` and says whether
/// it is an id and under which key.
pub(crate) fn parse_id_attrs(cx: &mut Ctxt, attrs: &[Attribute], field: &Ident) -> Option<IdAttr> {
    let mut found: Option<IdAttr> = None;
    for attr in attrs.iter().filter(|a| is(a, "id")) {
        let key = match &attr.meta {
            Meta::Path(_) => Some(field.unraw().to_string()),
            Meta::List(_) => {
                let mut key = None;
                let res = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("key") {
                        let lit = lit_str(&meta)?;
                        if key.is_some() {
                            return Err(meta.error("duplicate `key`: give the tag one key"));
                        }
                        check_tag_key(&lit)?;
                        key = Some(lit.value());
                        Ok(())
                    } else {
                        Err(meta.error(format!(
                            "unknown key `{}` in `#[id(...)]`: {ID_FORM}",
                            meta.path.to_token_stream()
                        )))
                    }
                });
                match res {
                    Ok(()) if key.is_none() => {
                        cx.error_spanned_by(attr, ID_FORM);
                        None
                    }
                    Ok(()) => key,
                    Err(e) => {
                        cx.syn_error(e);
                        None
                    }
                }
            }
            Meta::NameValue(_) => {
                cx.error_spanned_by(attr, ID_FORM);
                None
            }
        };
        if found.is_some() {
            cx.error_spanned_by(attr, "duplicate `#[id]` on this field: write it once");
        } else if let Some(key) = key {
            found = Some(IdAttr { key });
        }
    }
    found
}

/// Checks a custom tag key: a lower-case identifier, so that it is a valid
/// key (no `:`, no NUL, short enough to index) and names a variant of the
/// generated tag-key enum.
fn check_tag_key(lit: &LitStr) -> syn::Result<()> {
    let key = lit.value();
    let mut chars = key.chars();
    let ok = key.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new_spanned(
            lit,
            format!(
                "invalid tag key {key:?}: a tag key is a lower-case identifier \
                 (`[a-z][a-z0-9_]*`, at most 64 bytes), e.g. `account` or `cart_id`"
            ),
        ))
    }
}

/// The variant name a tag key gets in the generated tag-key enum:
/// `cart_id` → `CartId`.
pub(crate) fn key_variant(key: &str) -> String {
    key.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// Reports `#[id]` attributes where they mean nothing (on an enum, variant or
/// struct rather than a field).
pub(crate) fn reject_misplaced_id(cx: &mut Ctxt, attrs: &[Attribute], place: &str) {
    for attr in attrs.iter().filter(|a| is(a, "id")) {
        cx.error_spanned_by(
            attr,
            format!("`#[id]` goes on a field, not on {place}: mark each field whose value should become a tag"),
        );
    }
}

/// The one type argument of `ty` when it is `<name><T>` (e.g. `Option<T>`,
/// `std::vec::Vec<T>`).
fn generic_arg<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(tp) = ungroup(ty) else {
        return None;
    };
    if tp.qself.is_some() {
        return None;
    }
    let last = tp.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    if args.args.len() != 1 {
        return None;
    }
    match args.args.first() {
        Some(syn::GenericArgument::Type(inner)) => Some(inner),
        _ => None,
    }
}

/// Strips invisible groups and parentheses around a type.
fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(g) => ty = &g.elem,
            Type::Paren(p) => ty = &p.elem,
            _ => return ty,
        }
    }
}

const USE_INSTEAD: &str =
    "use a `String`, a `Uuid`, an integer, or a newtype that implements `Display`";

/// Checks the type of an `#[id]` field and says how it becomes tags. Reports
/// (and returns `None` for) types that are obviously wrong for a tag value.
pub(crate) fn id_shape(cx: &mut Ctxt, ty: &Type, context: IdContext) -> Option<IdShape> {
    let (shape, inner) = if let Some(inner) = generic_arg(ty, "Option") {
        (IdShape::Optional, inner)
    } else if let Some(inner) = generic_arg(ty, "Vec") {
        (IdShape::Many, inner)
    } else {
        (IdShape::One, ty)
    };
    if context == IdContext::State && shape != IdShape::One {
        let wrapper = if shape == IdShape::Optional {
            "Option"
        } else {
            "Vec"
        };
        cx.error_spanned_by(
            ty,
            format!(
                "a state's `#[id]` is one value, not `{wrapper}<..>`: the state's query selects \
                 events by it; use the plain type (e.g. `{}`) and create the state with its id \
                 filled in",
                inner.to_token_stream()
            ),
        );
        return None;
    }
    if shape != IdShape::One
        && (generic_arg(inner, "Option").is_some() || generic_arg(inner, "Vec").is_some())
    {
        cx.error_spanned_by(
            ty,
            "`#[id]` cannot nest `Option` and `Vec`: a tag is present or not; use `Option<T>` \
             for zero or one tag, or `Vec<T>` for one tag per element",
        );
        return None;
    }
    if check_scalar(cx, inner) {
        Some(shape)
    } else {
        None
    }
}

/// Checks a type that is displayed into one tag value.
fn check_scalar(cx: &mut Ctxt, ty: &Type) -> bool {
    let message = match ungroup(ty) {
        Type::Path(tp) if tp.qself.is_none() && tp.path.is_ident("f32") => Some(format!(
            "`#[id]` cannot be `f32`: float tags don't compare reliably (`1` vs `1.0`, rounding); {USE_INSTEAD}"
        )),
        Type::Path(tp) if tp.qself.is_none() && tp.path.is_ident("f64") => Some(format!(
            "`#[id]` cannot be `f64`: float tags don't compare reliably (`1` vs `1.0`, rounding); {USE_INSTEAD}"
        )),
        Type::Path(tp) if tp.qself.is_none() && tp.path.is_ident("bool") => Some(format!(
            "`#[id]` cannot be `bool`: a `key:true` tag is shared by about half of all events and identifies nothing; {USE_INSTEAD}, or drop `#[id]`"
        )),
        Type::Reference(_) => Some(format!(
            "`#[id]` cannot be a reference: events and states own their data; {USE_INSTEAD}"
        )),
        Type::Tuple(_) => Some(format!(
            "`#[id]` cannot be a tuple: a tag holds one value; put `#[id]` on one field per part, or {USE_INSTEAD}"
        )),
        Type::Array(_) | Type::Slice(_) => Some(format!(
            "`#[id]` cannot be an array or slice; use `Vec<T>` for one tag per element, or {USE_INSTEAD}"
        )),
        Type::Ptr(_)
        | Type::BareFn(_)
        | Type::TraitObject(_)
        | Type::ImplTrait(_)
        | Type::Never(_)
        | Type::Infer(_) => Some(format!("`#[id]` needs a plain data type: {USE_INSTEAD}")),
        _ => None,
    };
    match message {
        Some(m) => {
            cx.error_spanned_by(ty, m);
            false
        }
        None => true,
    }
}

/// A field's `#[serde(...)]` attributes, split for the two payload shadows.
///
/// The serializing shadow holds `&T` where the user's type is `T`, so every
/// user function that receives the field (`serialize_with`, the serializing
/// half of `with`, `skip_serializing_if`) is called through a generated
/// adapter taking `&&T`; those paths are kept apart here.
#[derive(Default)]
pub(crate) struct SerdeField {
    /// Attributes copied unchanged onto the serializing shadow field.
    pub(crate) ser: Vec<Meta>,
    /// Attributes copied unchanged onto the deserializing shadow field.
    pub(crate) de: Vec<Meta>,
    /// The function that serializes the field (`serialize_with`, or
    /// `with`'s `serialize`).
    pub(crate) serialize_with: Option<ExprPath>,
    /// The `skip_serializing_if` predicate.
    pub(crate) skip_serializing_if: Option<ExprPath>,
}

/// Parses the `#[serde(...)]` attributes of an event field.
pub(crate) fn parse_serde_field(cx: &mut Ctxt, attrs: &[Attribute]) -> SerdeField {
    let mut out = SerdeField::default();
    for attr in attrs.iter().filter(|a| is(a, "serde")) {
        let metas = match attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            Ok(metas) => metas,
            Err(e) => {
                cx.syn_error(e);
                continue;
            }
        };
        for meta in metas {
            let key = meta
                .path()
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match key.as_str() {
                "serialize_with" => {
                    if let Some(path) = string_path(cx, &meta) {
                        set_once(cx, &mut out.serialize_with, path, &meta, "serializer");
                    }
                }
                "with" => {
                    if let Some(mut path) = string_path(cx, &meta) {
                        path.path.segments.push(syn::PathSegment::from(syn::Ident::new(
                            "serialize",
                            proc_macro2::Span::call_site(),
                        )));
                        set_once(cx, &mut out.serialize_with, path, &meta, "serializer");
                    }
                    out.de.push(meta);
                }
                "skip_serializing_if" => {
                    if let Some(path) = string_path(cx, &meta) {
                        set_once(
                            cx,
                            &mut out.skip_serializing_if,
                            path,
                            &meta,
                            "`skip_serializing_if`",
                        );
                    }
                }
                "borrow" => cx.error_spanned_by(
                    &meta,
                    "`#[serde(borrow)]` is not supported on event fields: decoded events own their \
                     data; use an owned type such as `String`",
                ),
                "getter" => cx.error_spanned_by(
                    &meta,
                    "`#[serde(getter)]` is for remote derives and is not supported on event fields",
                ),
                _ => {
                    out.ser.push(meta.clone());
                    out.de.push(meta);
                }
            }
        }
    }
    out
}

fn set_once(cx: &mut Ctxt, slot: &mut Option<ExprPath>, path: ExprPath, meta: &Meta, what: &str) {
    if slot.is_some() {
        cx.error_spanned_by(
            meta,
            format!("this field already has a {what}: give `with`, `serialize_with` or `skip_serializing_if` once"),
        );
    } else {
        *slot = Some(path);
    }
}

/// The path inside `key = "path"`.
fn string_path(cx: &mut Ctxt, meta: &Meta) -> Option<ExprPath> {
    let lit = match meta {
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => s,
            other => {
                cx.error_spanned_by(other, "expected a string holding a path, e.g. \"my_fn\"");
                return None;
            }
        },
        _ => {
            cx.error_spanned_by(meta, "expected `key = \"path\"`");
            return None;
        }
    };
    match lit.parse::<ExprPath>() {
        Ok(path) => Some(path),
        Err(_) => {
            cx.error_spanned_by(lit, "expected a string holding a path, e.g. \"my_fn\"");
            None
        }
    }
}

/// A string literal value of `key = "..."` in a nested meta.
pub(crate) fn lit_str(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    meta.value()?.parse::<LitStr>()
}

/// `#[serde(...)]` metas as attribute tokens (nothing when empty).
pub(crate) fn serde_attr(metas: &[Meta]) -> TokenStream {
    if metas.is_empty() {
        TokenStream::new()
    } else {
        quote!(#[serde(#(#metas),*)])
    }
}
