//! `#[isola_sdk::fetch]`: export an `async fn(Request, Env, Ctx)` as the
//! component's `wasi:http/incoming-handler`; `#[isola_sdk::scheduled]` and
//! `#[isola_sdk::queue]` do the same for the `isola:worker/scheduled` and
//! `isola:worker/queue-consumer` handlers; `#[isola_sdk::durable_object]`
//! registers a Durable Object class.
//!
//! Each attribute only needs the function's name, so it walks the tokens
//! itself instead of pulling `syn` into every guest build.

use proc_macro::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};

#[proc_macro_attribute]
pub fn fetch(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("fetch", attr, item, |name| {
        format!(
            r#"
        #[doc(hidden)]
        struct __IsolaFetchHandler;
        impl ::isola_sdk::__private::IncomingHandler for __IsolaFetchHandler {{
            fn handle(
                request: ::isola_sdk::__private::IncomingRequest,
                response_out: ::isola_sdk::__private::ResponseOutparam,
            ) {{
                ::isola_sdk::__private::serve(request, response_out, {name});
            }}
        }}
        ::isola_sdk::__private::wasi::http::proxy::export!(__IsolaFetchHandler);
        "#
        )
    })
}

/// `#[isola_sdk::scheduled]`: export an
/// `async fn(ScheduledEvent, Env, Ctx) -> Result<()>` as the component's
/// `isola:worker/scheduled` handler (cron triggers).
///
/// Only a guest that uses this attribute exports the interface: the export
/// macro invoked here carries the component-type section declaring it.
#[proc_macro_attribute]
pub fn scheduled(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("scheduled", attr, item, |name| {
        format!(
            r#"
        #[doc(hidden)]
        struct __IsolaScheduledHandler;
        impl ::isola_sdk::__private::ScheduledGuest for __IsolaScheduledHandler {{
            fn handle(
                event: ::isola_sdk::__private::WitScheduledEvent,
            ) -> ::core::result::Result<(), ::std::string::String> {{
                ::isola_sdk::__private::run_scheduled(event, {name})
            }}
        }}
        ::isola_sdk::__private::scheduled_bindings::export_scheduled!(
            __IsolaScheduledHandler with_types_in ::isola_sdk::__private::scheduled_bindings
        );
        "#
        )
    })
}

/// `#[isola_sdk::queue]`: export an
/// `async fn(MessageBatch, Env, Ctx) -> Result<()>` as the component's
/// `isola:worker/queue-consumer` handler.
#[proc_macro_attribute]
pub fn queue(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("queue", attr, item, |name| {
        format!(
            r#"
        #[doc(hidden)]
        struct __IsolaQueueHandler;
        impl ::isola_sdk::__private::QueueGuest for __IsolaQueueHandler {{
            fn handle(
                batch: ::isola_sdk::__private::WitMessageBatch,
            ) -> ::std::vec::Vec<::isola_sdk::__private::WitOutcome> {{
                ::isola_sdk::__private::run_queue(batch, {name})
            }}
        }}
        ::isola_sdk::__private::queue_bindings::export_queue!(
            __IsolaQueueHandler with_types_in ::isola_sdk::__private::queue_bindings
        );
        "#
        )
    })
}

/// `#[isola_sdk::durable_object]`: register a type implementing
/// `isola_sdk::DurableObject` as the Durable Object class of its name, so
/// that the worker's `wasi:http` handler hands that class's events to it.
/// Put it on the struct (`#[isola_sdk::durable_object] struct Counter`) or
/// on its `impl DurableObject for Counter` block; give the class another
/// name with `#[isola_sdk::durable_object(class_name = "Counter")]`.
///
/// The registration runs when the instance starts, as a static
/// constructor (`.init_array`), which the component's exports run before
/// their first call.
#[proc_macro_attribute]
pub fn durable_object(attr: TokenStream, item: TokenStream) -> TokenStream {
    let class_name = match class_name_argument(attr) {
        Ok(name) => name,
        Err(message) => return compile_error(&message),
    };
    let ty = match object_type(item.clone()) {
        Ok(ty) => ty,
        Err(message) => return compile_error(&message),
    };
    let class_name = class_name.unwrap_or_else(|| {
        let plain: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
        plain.rsplit("::").next().unwrap_or(&plain).to_owned()
    });
    let register = format!(
        r#"
        const _: () = {{
            #[doc(hidden)]
            extern "C" fn __isola_register_durable_object() {{
                ::isola_sdk::durable::register::<{ty}>({class_name:?});
            }}
            #[used]
            #[cfg_attr(
                any(target_family = "wasm", target_os = "linux"),
                unsafe(link_section = ".init_array")
            )]
            static __ISOLA_REGISTER_DURABLE_OBJECT: extern "C" fn() =
                __isola_register_durable_object;
        }};
        "#
    );
    let mut out = item;
    out.extend(
        register
            .parse::<TokenStream>()
            .expect("valid generated tokens"),
    );
    out
}

/// The `class_name = "..."` argument, if given.
fn class_name_argument(attr: TokenStream) -> Result<Option<String>, String> {
    let usage = "#[isola_sdk::durable_object] takes no argument or `class_name = \"Name\"`";
    let tokens: Vec<TokenTree> = attr.into_iter().collect();
    match tokens.as_slice() {
        [] => Ok(None),
        [
            TokenTree::Ident(key),
            TokenTree::Punct(eq),
            TokenTree::Literal(value),
        ] if key.to_string() == "class_name" && eq.as_char() == '=' => {
            let text = value.to_string();
            match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(name) if !name.is_empty() && !name.contains('\\') => Ok(Some(name.to_owned())),
                _ => Err(usage.to_owned()),
            }
        }
        _ => Err(usage.to_owned()),
    }
}

/// The type the attribute is on: a struct's name, or the type after `for`
/// in an `impl Trait for Type` block.
fn object_type(item: TokenStream) -> Result<String, String> {
    let misplaced = "#[isola_sdk::durable_object] must be put on a struct or on its \
                     `impl DurableObject for Type` block";
    let generic = "#[isola_sdk::durable_object]: a generic type cannot be registered; \
                   register each instantiation with isola_sdk::durable::register";
    let mut tokens = item.into_iter().peekable();
    while let Some(token) = tokens.next() {
        let TokenTree::Ident(ident) = &token else {
            continue;
        };
        match ident.to_string().as_str() {
            "struct" => {
                let Some(TokenTree::Ident(name)) = tokens.next() else {
                    return Err(misplaced.to_owned());
                };
                if matches!(tokens.peek(), Some(TokenTree::Punct(p)) if p.as_char() == '<') {
                    return Err(generic.to_owned());
                }
                return Ok(name.to_string());
            }
            "impl" => {
                if matches!(tokens.peek(), Some(TokenTree::Punct(p)) if p.as_char() == '<') {
                    return Err(generic.to_owned());
                }
                for token in tokens.by_ref() {
                    if matches!(&token, TokenTree::Ident(i) if i.to_string() == "for") {
                        break;
                    }
                }
                let mut ty = String::new();
                for token in tokens.by_ref() {
                    match &token {
                        TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => break,
                        TokenTree::Ident(i) if i.to_string() == "where" => break,
                        TokenTree::Punct(p) if p.as_char() == '<' => return Err(generic.to_owned()),
                        other => ty.push_str(&other.to_string()),
                    }
                }
                return if ty.is_empty() {
                    Err(misplaced.to_owned())
                } else {
                    Ok(ty)
                };
            }
            _ => {}
        }
    }
    Err(misplaced.to_owned())
}

/// Keep the function and append the export code made from its name.
fn expand(
    attribute: &str,
    attr: TokenStream,
    item: TokenStream,
    export: impl FnOnce(&Ident) -> String,
) -> TokenStream {
    if !attr.is_empty() {
        return compile_error(&format!("#[isola_sdk::{attribute}] takes no arguments"));
    }
    let mut tokens = item.clone().into_iter();
    let mut name = None;
    while let Some(token) = tokens.next() {
        if matches!(&token, TokenTree::Ident(i) if i.to_string() == "fn") {
            if let Some(TokenTree::Ident(ident)) = tokens.next() {
                name = Some(ident);
            }
            break;
        }
    }
    let Some(name) = name else {
        return compile_error(&format!(
            "#[isola_sdk::{attribute}] must be put on a function"
        ));
    };
    let export: TokenStream = export(&name).parse().expect("valid generated tokens");
    let mut out = item;
    out.extend(export);
    out
}

fn compile_error(message: &str) -> TokenStream {
    let ident = TokenTree::Ident(Ident::new("compile_error", Span::call_site()));
    let bang: TokenStream = "!".parse().expect("valid token");
    let args = TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        TokenTree::Literal(proc_macro::Literal::string(message)).into(),
    ));
    let mut out: TokenStream = ident.into();
    out.extend(bang);
    out.extend([args]);
    out.extend::<TokenStream>(";".parse().expect("valid token"));
    out
}
