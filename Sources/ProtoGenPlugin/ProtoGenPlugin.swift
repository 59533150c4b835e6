import Foundation
import PackagePlugin

/// Generates Swift from .proto files at build time for any target that holds a `protogen.json`:
///
/// ```json
/// { "files": ["harpoon/v1/harpoon.proto"], "protoPaths": ["Protos"], "visibility": "public", "rpc": true }
/// ```
///
/// `files` are import paths, looked up under `protoPaths` (relative to the package root; default `["Protos"]`).
/// Every .proto under those paths and the generator itself are inputs, so output is regenerated exactly when one
/// of them changes.
@main
struct ProtoGenPlugin: BuildToolPlugin {
    struct Configuration: Decodable {
        var files: [String]
        var protoPaths: [String]?
        var visibility: String?
        var moduleMappings: [String: String]?
        /// Generate ShoalRPC servers and clients for services (the target must depend on ShoalRPC).
        var rpc: Bool?
    }

    struct PluginError: Error, CustomStringConvertible {
        var description: String
    }

    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let target = target as? SourceModuleTarget else { return [] }
        let configURL = target.directoryURL.appending(path: "protogen.json")
        guard let data = FileManager.default.contents(atPath: configURL.path) else {
            throw PluginError(
                description:
                    "target '\(target.name)' uses ProtoGenPlugin but has no protogen.json; add one listing its .proto files: {\"files\": [\"pkg/v1/file.proto\"]}"
            )
        }
        let config: Configuration
        do {
            config = try JSONDecoder().decode(Configuration.self, from: data)
        } catch {
            throw PluginError(description: "\(configURL.path): invalid protogen.json: \(error)")
        }
        let root = context.package.directoryURL
        let protoPaths = (config.protoPaths ?? ["Protos"]).map { root.appending(path: $0).standardizedFileURL }
        for file in config.files
        where !protoPaths.contains(where: { FileManager.default.fileExists(atPath: $0.appending(path: file).path) }) {
            throw PluginError(description: "\(configURL.path): '\(file)' is not under any of \(protoPaths.map(\.path))")
        }
        var inputs: [URL] = [configURL]
        for directory in protoPaths {
            let enumerator = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil)
            while let url = enumerator?.nextObject() as? URL {
                if url.pathExtension == "proto" { inputs.append(url) }
            }
        }
        let tool = try context.tool(named: "protogen")
        inputs.append(tool.url)
        let outputDirectory = context.pluginWorkDirectoryURL.appending(path: "protogen")
        var arguments = ["--out", outputDirectory.path]
        for directory in protoPaths { arguments += ["--proto-path", directory.path] }
        if let visibility = config.visibility { arguments += ["--visibility", visibility] }
        for (file, module) in (config.moduleMappings ?? [:]).sorted(by: { $0.key < $1.key }) {
            arguments += ["--module-mapping", "\(file)=\(module)"]
        }
        if config.rpc == true { arguments.append("--rpc") }
        arguments += config.files
        // The same names as SwiftGenerator.outputName(for:) (a plugin cannot import the library it runs).
        let outputs = config.files.map { file in
            var base = file.hasSuffix(".proto") ? String(file.dropLast(6)) : file
            base = base.replacingOccurrences(of: "/", with: "_")
            return outputDirectory.appending(path: base + ".pb.swift")
        }
        return [
            .buildCommand(
                displayName: "Generating Swift from \(config.files.count) .proto file(s) for \(target.name)",
                executable: tool.url,
                arguments: arguments,
                inputFiles: inputs,
                outputFiles: outputs
            )
        ]
    }
}
