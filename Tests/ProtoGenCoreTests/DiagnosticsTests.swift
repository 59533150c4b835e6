import ProtoGenCore
import Testing

@Suite("Diagnostics")
struct DiagnosticsTests {
    /// The diagnostics for a one-file schema, as printed.
    func diagnostics(_ source: String, extraFiles: [String: String] = [:]) -> [String] {
        var files = extraFiles
        files["bad.proto"] = source
        var resolver = Resolver(provider: InMemorySourceProvider(files: files))
        do {
            _ = try resolver.resolve(["bad.proto"])
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test("a file with several semantic errors reports all of them, in source order, as file:line:column")
    func severalErrors() {
        let source = """
            syntax = "proto3";
            package shop.v1;

            message Order {
              uint64 id = 1;
              string id = 2;
              Missing item = 3;
              int32 count = 1;
              int32 legacy = 5;
              reserved 5, 10 to 12;
              reserved "old";
              string old = 11;
              int32 huge = 536870912;
              int32 internal = 19001;
            }

            enum Color {
              RED = 1;
              BLUE = 1;
            }
            """
        #expect(
            diagnostics(source) == [
                "bad.proto:6:10: 'id' is already defined at bad.proto:5:10",
                "bad.proto:7:3: unknown type 'Missing'",
                "bad.proto:8:9: field number 1 has already been used in 'Order' by field 'id'",
                "bad.proto:9:9: field 'legacy' uses reserved number 5 (reserved 5)",
                "bad.proto:12:10: field 'old' uses reserved number 11 (reserved 10 to 12)",
                "bad.proto:12:10: field name 'old' is reserved",
                "bad.proto:13:9: field number 536870912 of 'huge' is out of range: field numbers are 1 to 536870911",
                "bad.proto:14:9: field number 19001 of 'internal' is reserved for the protobuf implementation (19000 to 19999)",
                "bad.proto:18:3: the first value of enum 'Color' must be zero in proto3",
                "bad.proto:19:3: 'BLUE' uses the same number as 'RED'; to allow this, set 'option allow_alias = true;'",
            ])
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var source: String
        var expected: String
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(
            name: "proto2", source: "syntax = \"proto2\";\nmessage A {}",
            expected: "bad.proto:1:10: proto2 is not supported; Shoal's generator handles proto3 only"),
        Case(
            name: "no syntax", source: "message A {}",
            expected:
                "bad.proto:1:1: no syntax declared, which means proto2: proto2 is not supported; add 'syntax = \"proto3\";'"
        ),
        Case(
            name: "editions", source: "edition = \"2023\";",
            expected: "bad.proto:1:11: editions are not supported; Shoal's generator handles proto3 only"),
        Case(
            name: "missing semicolon", source: "syntax = \"proto3\";\nmessage A {\n  int32 a = 1\n}",
            expected: "bad.proto:4:1: expected ';', found '}'"),
        Case(
            name: "required", source: "syntax = \"proto3\";\nmessage A { required int32 a = 1; }",
            expected: "bad.proto:2:13: required fields are not allowed in proto3"),
        Case(
            name: "default value", source: "syntax = \"proto3\";\nmessage A { int32 a = 1 [default = 5]; }",
            expected: "bad.proto:2:26: explicit default values are not allowed in proto3"),
        Case(
            name: "extensions", source: "syntax = \"proto3\";\nmessage A { extensions 100 to 200; }",
            expected: "bad.proto:2:13: extension ranges are not allowed in proto3"),
        Case(
            name: "map key", source: "syntax = \"proto3\";\nmessage A { map<double, int32> m = 1; }",
            expected: "bad.proto:2:17: invalid map key type 'double': keys must be integral or string types"),
        Case(
            name: "map in oneof", source: "syntax = \"proto3\";\nmessage A { oneof o { map<int32, int32> m = 1; } }",
            expected: "bad.proto:2:23: map fields are not allowed in oneofs"),
        Case(
            name: "label in oneof", source: "syntax = \"proto3\";\nmessage A { oneof o { repeated int32 x = 1; } }",
            expected: "bad.proto:2:23: fields in oneofs must not have labels (repeated)"),
        Case(
            name: "unterminated string", source: "syntax = \"proto3\";\nimport \"x.proto;\n",
            expected: "bad.proto:2:8: unterminated string literal"),
        Case(
            name: "missing import", source: "syntax = \"proto3\";\nimport \"nowhere.proto\";",
            expected: "bad.proto:2:8: import \"nowhere.proto\" was not found"),
        Case(
            name: "not a type",
            source: "syntax = \"proto3\";\npackage p;\nmessage R {}\nservice S { rpc M(S) returns (R); }",
            expected: "bad.proto:4:19: 'S' is not a message or enum type"),
        Case(
            name: "rpc with an enum",
            source: "syntax = \"proto3\";\nenum E { Z = 0; }\nmessage M {}\nservice S { rpc R(E) returns (M); }",
            expected: "bad.proto:4:19: 'E' is not a message type"),
        Case(
            name: "packed on a string",
            source: "syntax = \"proto3\";\nmessage A { repeated string s = 1 [packed = true]; }",
            expected: "bad.proto:2:36: [packed = true] can only be specified for repeated primitive fields"),
        Case(
            name: "enum value scoping", source: "syntax = \"proto3\";\nenum A { X = 0; }\nenum B { X = 0; }",
            expected:
                "bad.proto:3:10: 'X' is already defined at bad.proto:2:10 (enum values are scoped like C++ enumerators: siblings of their enum, not children)"
        ),
        Case(
            name: "partly resolved name",
            source:
                "syntax = \"proto3\";\npackage p;\nmessage Outer { message Inner {} }\nmessage A { Outer.Missing x = 1; }",
            expected: "bad.proto:4:13: 'Outer.Missing' resolved to 'p.Outer.Missing', which is not defined"),
        Case(
            name: "JSON name clash", source: "syntax = \"proto3\";\nmessage A { int32 foo_bar = 1; int32 fooBar = 2; }",
            expected: "bad.proto:2:38: the JSON name of field 'fooBar' conflicts with field 'foo_bar'"),
        Case(
            name: "reserved enum value", source: "syntax = \"proto3\";\nenum E { Z = 0; reserved 3; Q = 3; }",
            expected: "bad.proto:2:29: enum value 'Q' uses reserved number 3"),
        Case(
            name: "unknown declaration", source: "syntax = \"proto3\";\nmesage A {}",
            expected: "bad.proto:2:1: expected a declaration, found 'mesage'"),
    ]

    @Test("each kind of mistake gets its diagnostic", arguments: cases)
    func singleError(_ input: Case) {
        #expect(diagnostics(input.source) == [input.expected])
    }

    @Test("an import cycle is reported at the import that closes it")
    func importCycle() {
        let result = diagnostics(
            "syntax = \"proto3\";\nimport \"a.proto\";",
            extraFiles: ["a.proto": "syntax = \"proto3\";\nimport \"bad.proto\";"]
        )
        #expect(result == ["a.proto:2:8: import cycle: bad.proto -> a.proto -> bad.proto"])
    }

    @Test("types of a file that was not imported are not visible")
    func visibility() {
        let files = [
            "other.proto": "syntax = \"proto3\";\nmessage Other {}",
            "middle.proto": "syntax = \"proto3\";\nimport \"other.proto\";",
        ]
        #expect(
            diagnostics("syntax = \"proto3\";\nimport \"middle.proto\";\nmessage A { Other o = 1; }", extraFiles: files)
                == [
                    "bad.proto:3:13: unknown type 'Other'"
                ])
        let publicFiles = [
            "other.proto": "syntax = \"proto3\";\nmessage Other {}",
            "middle.proto": "syntax = \"proto3\";\nimport public \"other.proto\";",
        ]
        #expect(
            diagnostics(
                "syntax = \"proto3\";\nimport \"middle.proto\";\nmessage A { Other o = 1; }", extraFiles: publicFiles)
                == [])
    }

    @Test("scoping: the innermost definition wins, and a leading dot means fully qualified")
    func scoping() throws {
        let source = """
            syntax = "proto3";
            package p;
            message T {}
            message Outer {
              message T {}
              T inner = 1;
              .p.T outer = 2;
              Outer.T qualified = 3;
            }
            """
        var resolver = Resolver(provider: InMemorySourceProvider(files: ["s.proto": source]))
        let file = try #require(try resolver.resolve(["s.proto"])["s.proto"])
        let fields = file.messages[1].fields.map(\.type)
        #expect(fields == [.message("p.Outer.T"), .message("p.T"), .message("p.Outer.T")])
    }
}
