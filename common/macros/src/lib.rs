//! The `#[task]` attribute of Blitzen.
//!
//! ```ignore
//! #[blitzen::task]
//! pub fn square(x: u64) -> u64 { x * x }
//! ```
//!
//! expands to:
//! - the function itself, renamed to `__blitzen_task_square`;
//! - a zero-sized handle type `square` and a constant `square` of that type, so that
//!   `dispatcher.run(square, 4)` is type-checked against the handle, and `square(4)` still calls
//!   the function (the handle dereferences to a function pointer);
//! - an implementation of `blitzen::Task` (argument type, output type, name, signature,
//!   fingerprint);
//! - a registry entry, so that a worker process of the same binary can run the task by name.
//!
//! Arguments: none → `()`, one → its type, several → a tuple. A return type whose last path
//! segment is `Result` is a fallible task: `Ok` is the output, `Err` (any `Display`) a failure.
//!
//! Options: `#[task(name = "other")]` registers under another name (the default is the function
//! name); `#[task(crate = path)]` names the path of the `blitzen` crate when it is re-exported
//! under another name; `#[task(unregistered)]` leaves the task out of the automatic registry
//! (the built-in tasks use it: the registry lists them explicitly).

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::{FnArg, GenericArgument, ItemFn, PathArguments, ReturnType, Type, parse_macro_input};

/// Turns a plain function into a Blitzen task.
///
/// ```ignore
/// #[blitzen::task]
/// pub fn square(x: u64) -> u64 { x * x }
///
/// let id = dispatcher.run(square, 4);   // type-checked against `fn square(u64) -> u64`
/// assert_eq!(square(3), 9);             // still a plain function
/// ```
///
/// - Arguments: none → the task takes `()`, one → its type, several → a tuple
///   (`run(add, (1, 2))`). They must be owned (`String`, `Vec<T>`, not `&str`, `&[T]`) and
///   implement `Serialize` and `Deserialize`: they travel to another process as MessagePack.
/// - Result: any serde type, or `Result<T, E>` with `E: Display` (an `Err` becomes
///   `TaskError::Returned` with its text).
/// - The function cannot be `async`, generic, or take `self`.
///
/// Options:
/// - `#[task(name = "other")]`: register it under another name (default: the function's name).
///   Names are unique within a binary; two tasks with one name are refused at start.
/// - `#[task(crate = path)]`: the path of the `blitzen` crate, when it is re-exported under
///   another name.
/// - `#[task(unregistered)]`: leave it out of the binary's registry (for tasks listed by hand,
///   as the built-in tasks are).
/// - `#[task(cpus = 2, memory = "4GiB", resources(gpu = 1, license = 1))]`: what each call
///   holds while it runs, unless its `RunOptions` say otherwise: CPUs (worker slots), memory
///   (also its limit: past it the call ends `TaskError::MemoryExceeded`) and counted resources
///   that agents advertise. A size that does not parse stops the build.
/// - `#[task(priority = 10)]`: its calls' priority unless their `RunOptions` say otherwise
///   (higher first; 0 by default; negative is lower).
///
/// A task's signature travels with each call: a worker built from another definition answers
/// `TaskError::SignatureMismatch` rather than misreading the bytes.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options { name: None, krate: None, register: true, needs: Vec::new() };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("cpus") {
            let cpus = meta.value()?.parse::<syn::LitInt>()?;
            if cpus.base10_parse::<u32>()? == 0 {
                return Err(syn::Error::new_spanned(cpus, "a task needs at least 1 CPU"));
            }
            options.needs.push(quote!(.with_cpus(#cpus)));
            Ok(())
        } else if meta.path.is_ident("memory") {
            let memory = meta.value()?.parse::<syn::LitStr>()?;
            let message = format!(
                "#[task(memory = {:?})]: not a size (write e.g. \"512MiB\" or \"4GiB\")",
                memory.value()
            );
            options.needs.push(quote!(.with_memory(match __private_parse_size(#memory) {
                ::core::result::Result::Ok(bytes) => bytes,
                ::core::result::Result::Err(_) => ::core::panic!(#message),
            })));
            Ok(())
        } else if meta.path.is_ident("resources") {
            meta.parse_nested_meta(|resource| {
                let name = resource.path.require_ident()?.to_string();
                let count = resource.value()?.parse::<syn::LitInt>()?;
                if count.base10_parse::<u64>()? == 0 {
                    return Err(syn::Error::new_spanned(count, "a count must be at least 1"));
                }
                options.needs.push(quote!(.with_resource(#name, #count)));
                Ok(())
            })
        } else if meta.path.is_ident("priority") {
            let value = meta.value()?;
            let negative = value.peek(syn::Token![-]);
            if negative {
                value.parse::<syn::Token![-]>()?;
            }
            let priority = value.parse::<syn::LitInt>()?;
            let magnitude = priority.base10_parse::<i64>()?;
            let signed = if negative { -magnitude } else { magnitude };
            let Ok(priority) = i32::try_from(signed) else {
                return Err(syn::Error::new_spanned(priority, "a priority is an i32"));
            };
            options.needs.push(quote!(.with_priority(#priority)));
            Ok(())
        } else if meta.path.is_ident("name") {
            options.name = Some(meta.value()?.parse::<syn::LitStr>()?.value());
            Ok(())
        } else if meta.path.is_ident("crate") {
            options.krate = Some(meta.value()?.parse::<syn::Path>()?);
            Ok(())
        } else if meta.path.is_ident("unregistered") {
            options.register = false;
            Ok(())
        } else {
            Err(meta.error(
                "unknown option: expected `name = \"...\"`, `crate = path`, `unregistered`, \
                 `cpus = N`, `memory = \"SIZE\"`, `resources(NAME = N, ...)` or `priority = N`",
            ))
        }
    });
    parse_macro_input!(attr with parser);
    let func = parse_macro_input!(item as ItemFn);
    match expand(options, func) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

struct Options {
    name: Option<String>,
    krate: Option<syn::Path>,
    /// Whether to submit a registry entry (the built-in tasks are listed explicitly instead).
    register: bool,
    /// The `Needs` builder calls of `cpus`, `memory`, `resources` and `priority`, in order.
    needs: Vec<TokenStream2>,
}

fn expand(options: Options, func: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if sig.asyncness.is_some() {
        return Err(syn::Error::new_spanned(sig.asyncness, "a task cannot be async"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(&sig.generics, "a task cannot be generic"));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(v, "a task cannot be variadic"));
    }
    let mut arg_types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(r, "a task cannot take self"));
            }
            FnArg::Typed(t) => {
                refuse_borrowed(&t.ty, "argument")?;
                arg_types.push((*t.ty).clone())
            }
        }
    }

    let krate: syn::Path = options.krate.unwrap_or_else(|| syn::parse_quote!(::blitzen));
    let private = quote!(#krate::__private);
    let ident = &sig.ident;
    let vis = &func.vis;
    let task_name = options.name.unwrap_or_else(|| ident.to_string());
    let impl_ident = format_ident!("__blitzen_task_{}", ident);
    let docs: Vec<_> = func.attrs.iter().filter(|a| a.path().is_ident("doc")).collect();

    let ret_type: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    refuse_borrowed(&ret_type, "result")?;
    let fallible_output = result_ok_type(&ret_type);
    let output_type = fallible_output.clone().unwrap_or_else(|| ret_type.clone());

    let args_type: Type = match arg_types.len() {
        1 => arg_types[0].clone(),
        _ => syn::parse_quote!((#(#arg_types,)*)),
    };
    let names: Vec<_> = (0..arg_types.len()).map(|i| format_ident!("__a{}", i)).collect();
    let pattern = match names.len() {
        1 => quote!(#(#names)*),
        _ => quote!((#(#names,)*)),
    };
    let invoke_helper = if fallible_output.is_some() {
        quote!(#private::invoke_fallible::<#args_type, _, _, _>)
    } else {
        quote!(#private::invoke_value::<#args_type, _, _>)
    };
    // `Accepts`: each argument may be its value or anything that stands for one (a handle of
    // a task with that output).
    let inputs: Vec<_> = (0..arg_types.len()).map(|i| format_ident!("__P{}", i)).collect();
    let accepts = match arg_types.len() {
        0 => quote! {
            impl #private::Accepts<()> for #ident {
                fn parts(inputs: ()) -> #private::Parts {
                    #private::Parts::single(#private::Input::<()>::part(inputs))
                }
            }
        },
        1 => {
            let ty = &arg_types[0];
            quote! {
                impl<__P0: #private::Input<#ty>> #private::Accepts<__P0> for #ident {
                    fn parts(inputs: __P0) -> #private::Parts {
                        #private::Parts::single(#private::Input::<#ty>::part(inputs))
                    }
                }
            }
        }
        _ => quote! {
            impl<#(#inputs: #private::Input<#arg_types>),*> #private::Accepts<(#(#inputs,)*)>
                for #ident
            {
                fn parts(inputs: (#(#inputs,)*)) -> #private::Parts {
                    let (#(#names,)*) = inputs;
                    #private::Parts::array(::std::vec![
                        #(#private::Input::<#arg_types>::part(#names)),*
                    ])
                }
            }
        },
    };
    let signature = format!(
        "fn {}({}) -> {}",
        task_name,
        arg_types.iter().map(type_text).collect::<Vec<_>>().join(", "),
        type_text(&ret_type)
    );
    let signature = syn::LitStr::new(&signature, Span::call_site());

    let registration = if options.register {
        quote! {
            #private::inventory::submit! { #ident::__BLITZEN_ENTRY }
        }
    } else {
        quote!()
    };

    let mut impl_fn = func.clone();
    impl_fn.sig.ident = impl_ident.clone();
    impl_fn.vis = syn::Visibility::Inherited;

    let handle_doc = syn::LitStr::new(
        &format!(
            "Blitzen task `{}`, registered as `{}`: `dispatcher.run({}, args)` submits it, and \
             `{}(…)` calls the function directly.",
            signature.value(),
            task_name,
            ident,
            ident
        ),
        Span::call_site(),
    );
    let gap = if docs.is_empty() { quote!() } else { quote!(#[doc = ""]) };
    // Evaluated where the task is declared, so a bad size stops even `cargo check`.
    let needs_checked = if options.needs.is_empty() {
        quote!()
    } else {
        quote!(const _: #private::Needs = <#ident as #private::Task>::NEEDS;)
    };
    let needs = if options.needs.is_empty() {
        quote!()
    } else {
        let calls = &options.needs;
        quote! {
            const NEEDS: #private::Needs = {
                use #private::parse_size as __private_parse_size;
                #private::Needs::PLAIN #(#calls)*
            };
        }
    };

    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_snake_case, clippy::too_many_arguments)]
        #impl_fn

        #(#docs)*
        #gap
        #[doc = #handle_doc]
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident {}

        #(#docs)*
        #gap
        #[doc = #handle_doc]
        #[allow(non_upper_case_globals)]
        #vis const #ident: #ident = #ident {};

        impl #private::Task for #ident {
            type Args = #args_type;
            type Output = #output_type;
            const NAME: &'static str = #task_name;
            const SIGNATURE: &'static str = #signature;
            const FINGERPRINT: u64 = #private::fingerprint(#signature);
            #needs
        }

        impl ::core::ops::Deref for #ident {
            type Target = fn(#(#arg_types),*) -> #ret_type;
            fn deref(&self) -> &Self::Target {
                const F: fn(#(#arg_types),*) -> #ret_type = #impl_ident;
                &F
            }
        }

        impl #ident {
            #[doc(hidden)]
            #[allow(dead_code)]
            #vis const __BLITZEN_ENTRY: #private::TaskEntry = #private::TaskEntry {
                name: #task_name,
                module: ::core::module_path!(),
                signature: #signature,
                fingerprint: #private::fingerprint(#signature),
                invoke: #ident::__blitzen_invoke,
            };

            #[doc(hidden)]
            fn __blitzen_invoke(args: &[u8]) -> #private::Outcome {
                #invoke_helper(args, |#pattern| #impl_ident(#(#names),*))
            }
        }

        #accepts
        #registration
        #needs_checked
    })
}

/// Refuses a type that borrows (`&T`, or anything with a lifetime): arguments arrive and results
/// leave as bytes on another process, so a task owns what it takes and returns.
fn refuse_borrowed(ty: &Type, what: &str) -> syn::Result<()> {
    let owned = |inner: &Type| match inner {
        Type::Path(p) if p.path.is_ident("str") => "String".to_string(),
        Type::Path(p) if p.path.is_ident("Path") => "PathBuf".to_string(),
        Type::Slice(s) => {
            let elem = &s.elem;
            format!("Vec<{}>", type_text(elem))
        }
        other => type_text(other),
    };
    match ty {
        Type::Reference(r) => Err(syn::Error::new_spanned(
            r,
            format!(
                "a task {what} cannot be borrowed: it crosses to another process as bytes; use an \
                 owned type (String, Vec<T>): here `{}` instead of `{}`",
                owned(&r.elem),
                type_text(ty)
            ),
        )),
        Type::Path(p) => {
            for segment in &p.path.segments {
                if let PathArguments::AngleBracketed(args) = &segment.arguments {
                    for arg in &args.args {
                        match arg {
                            GenericArgument::Lifetime(l) if l.ident != "static" => {
                                return Err(syn::Error::new_spanned(
                                    l,
                                    format!(
                                        "a task {what} cannot borrow (`{}` has a lifetime): use \
                                         an owned type (String, Vec<T>)",
                                        type_text(ty)
                                    ),
                                ));
                            }
                            GenericArgument::Type(t) => refuse_borrowed(t, what)?,
                            _ => {}
                        }
                    }
                }
            }
            Ok(())
        }
        Type::Tuple(t) => t.elems.iter().try_for_each(|e| refuse_borrowed(e, what)),
        Type::Array(a) => refuse_borrowed(&a.elem, what),
        Type::Slice(s) => refuse_borrowed(&s.elem, what),
        Type::Paren(p) => refuse_borrowed(&p.elem, what),
        Type::Group(g) => refuse_borrowed(&g.elem, what),
        _ => Ok(()),
    }
}

/// `T` when `ty` is `…::Result<T, …>` (the last path segment named `Result`).
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    })
}

/// A type as compact text: `Vec<u8>` rather than `Vec < u8 >`.
fn type_text(ty: &Type) -> String {
    let raw = quote!(#ty).to_string();
    let mut out = String::with_capacity(raw.len());
    let chars: Vec<char> = raw.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let prev = if i > 0 { chars[i - 1] } else { ' ' };
            let next = chars.get(i + 1).copied().unwrap_or(' ');
            if matches!(prev, '<' | '(' | '[' | '&' | ':')
                || matches!(next, '<' | '>' | ',' | ')' | ']' | ':')
            {
                continue;
            }
        }
        out.push(c);
    }
    out
}
