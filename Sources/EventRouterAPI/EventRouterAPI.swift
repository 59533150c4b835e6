// Generated from Protos/eventrouter/v1/eventrouter.proto by the build plugin; this file only re-exports what the
// generated code is built on, so that users import one module.
@_exported public import HarpoonAPI
