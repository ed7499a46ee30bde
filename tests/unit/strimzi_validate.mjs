// Checks Strimzi resources (a JSON array of Kubernetes objects on stdin) against the schemas
// compiled from Strimzi's CRDs (npm @kubernetes-models/strimzi-kafka-operator, installed by
// `make k8s-models` under the directory given as argv[2]). Prints a JSON array with one
// {kind, name, error} per object; error is null when the object passes.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const models = join(
  process.argv[2],
  "node_modules/@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1/index.js",
);
const kinds = await import(pathToFileURL(models).href);
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((doc) => {
  const Model = kinds[doc.kind];
  if (doc.apiVersion !== "kafka.strimzi.io/v1" || Model === undefined) {
    return { kind: doc.kind, name: doc.metadata?.name, error: `not a Strimzi v1 kind` };
  }
  try {
    new Model(doc).validate();
    return { kind: doc.kind, name: doc.metadata.name, error: null };
  } catch (err) {
    return { kind: doc.kind, name: doc.metadata.name, error: String(err.message ?? err) };
  }
});
console.log(JSON.stringify(results));
