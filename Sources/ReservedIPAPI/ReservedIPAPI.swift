@_exported public import ProtoWellKnownTypes
// Generated from Protos/reservedip/v1/reservedip.proto by the build plugin; this file only re-exports what the
// generated code is built on, so that users import one module.
@_exported public import ShoalRPC
