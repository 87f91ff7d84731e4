//! `#[isola_sdk::fetch]`: export an `async fn(Request, Env, Ctx)` as the
//! component's `wasi:http/incoming-handler`.
//!
//! The attribute only needs the function's name, so it walks the tokens
//! itself instead of pulling `syn` into every guest build.

use proc_macro::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};

#[proc_macro_attribute]
pub fn fetch(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return compile_error("#[isola_sdk::fetch] takes no arguments");
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
        return compile_error("#[isola_sdk::fetch] must be put on a function");
    };
    let export: TokenStream = format!(
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
    .parse()
    .expect("valid generated tokens");
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
