// The messages generated from Tests/Protos/conformance/v1/all_types.proto (see protogen.json).
