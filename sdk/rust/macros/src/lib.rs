//! `#[isola_sdk::fetch]`: export an `async fn(Request, Env, Ctx)` as the
//! component's `wasi:http/incoming-handler`; `#[isola_sdk::scheduled]` and
//! `#[isola_sdk::queue]` do the same for the `isola:worker/scheduled` and
//! `isola:worker/queue-consumer` handlers.
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
