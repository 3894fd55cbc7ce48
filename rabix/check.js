#!/usr/bin/env node
/*
 * Load cryoflow's CWL tools and workflows the way Rabix Composer 1.5 does, and fail loudly
 * on anything Composer would reject or show as an error.
 *
 *   node rabix/check.js                 # every tools/*.cwl and workflows/*.cwl of the repository
 *   node rabix/check.js FILE.cwl ...    # only these files
 *
 * For each file:
 *   1. parse the YAML (js-yaml, as Composer does) and require cwlVersion v1.0;
 *   2. validate the document against cwlts' CWL v1.0 JSON schema (ajv, draft-04 meta schema),
 *      the check behind Composer's "invalid CWL" banner;
 *   3. resolve every step's `run:` reference to the file it names (relative to the workflow),
 *      schema-validating that file too, and embed it, as Composer's local resolver does;
 *   4. build the model with cwlts' CommandLineToolFactory / WorkflowFactory. The model must be
 *      a v1.0 model (V1CommandLineToolModel / V1WorkflowModel), every step a V1StepModel whose
 *      run is itself a v1.0 model (not a bare path), with no error-level issue anywhere and a
 *      canvas position (sbg:x, sbg:y) on every input, output and step of a workflow, and a tidy
 *      canvas: no two nodes overlapping, no label long enough to run into a neighbour.
 *   Also: every input and output has a CWL type (map-form types escape the schema), and every
 *   step feeds only ports its tool has and feeds every required one (cwlts drops unknown ports
 *   silently, so Composer would show a half-wired node).
 *
 * Exit status 0 when every file passes, 1 otherwise; one line per problem on stderr.
 * Needs `npm ci` in rabix/ (package.json pins cwlts 1.15.29, the model Composer 1.5 bundles).
 */
"use strict";

const fs = require("fs");
const path = require("path");
const Ajv = require("ajv");
const yaml = require("js-yaml");
const { schemas } = require("cwlts/schemas");
const { WorkflowFactory, CommandLineToolFactory } = require("cwlts/models/generic");
const { V1WorkflowModel, V1CommandLineToolModel, V1StepModel } = require("cwlts/models/v1.0");

const ROOT = path.resolve(__dirname, "..");

function makeValidators() {
  const ajv = new Ajv({ allErrors: true, schemaId: "auto", jsonPointers: true });
  ajv.addMetaSchema(require("ajv/lib/refs/json-schema-draft-04.json"));
  // cwlts' v1.0 schema is one document whose top level is oneOf(CommandLineTool, ExpressionTool,
  // Workflow). A document names its class, so validate against that branch alone: the verdict is
  // the same and the messages are about the class the file is, not the two it is not.
  const forClass = (schema, cls) => Object.assign({}, schema, { oneOf: [{ $ref: `#/definitions/${cls}` }] });
  return {
    CommandLineTool: ajv.compile(forClass(schemas.v1.cltSchema, "CommandLineTool")),
    Workflow: ajv.compile(forClass(schemas.v1.wfSchema, "Workflow")),
    ExpressionTool: ajv.compile(forClass(schemas.v1.etSchema, "ExpressionTool")),
  };
}

const validators = makeValidators();

/** Parse one file and check its version and schema; returns [document, problems]. */
function loadDocument(file) {
  let doc;
  try {
    doc = yaml.safeLoad(fs.readFileSync(file, "utf8"), { filename: file, json: true });
  } catch (err) {
    return [null, [`not readable as YAML: ${err.message.split("\n")[0]}`]];
  }
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) {
    return [null, ["not a CWL document (expected a mapping at the top level)"]];
  }
  const problems = [];
  if (doc.cwlVersion !== "v1.0") {
    problems.push(`cwlVersion is ${JSON.stringify(doc.cwlVersion)}, Composer 1.5 edits v1.0 only`);
  }
  const validate = validators[doc.class];
  if (!validate) {
    problems.push(`class ${JSON.stringify(doc.class)} is not CommandLineTool, Workflow or ExpressionTool`);
    return [doc, problems];
  }
  if (!validate(doc)) {
    const errors = validate.errors.filter((e) => !(e.keyword === "oneOf" && !e.dataPath));
    for (const e of errors.length ? errors : validate.errors) {
      problems.push(`schema: ${e.dataPath || "/"} ${e.message}${e.params ? " " + JSON.stringify(e.params) : ""}`);
    }
  }
  return [doc, problems];
}

/** Entries of a CWL map-or-array field as [id, value] pairs (`id` from the key or the entry). */
function entries(field, keyName) {
  if (!field) return [];
  if (Array.isArray(field)) {
    return field.map((e) => (typeof e === "string" ? [e, {}] : [e[keyName || "id"], e]));
  }
  return Object.keys(field).map((k) => [k, field[k]]);
}

function isOptional(type) {
  if (typeof type === "string") return type.endsWith("?") || type === "null" || type === "Any";
  if (Array.isArray(type)) return type.includes("null");
  return false;
}

/**
 * The step's `in`/`out` name ports of the tool it runs, and every required tool input is fed.
 * cwlts silently drops a port the tool lacks, so Composer would show a half-wired node.
 */
function checkWiring(step, run, where, problems) {
  const runIn = new Map(entries(run.inputs));
  const runOut = new Set(entries(run.outputs).map(([id]) => id));
  const stepIn = new Map(
    entries(step.in).map(([id, v]) => [id, typeof v === "object" && !Array.isArray(v) ? v : { source: v }])
  );
  for (const id of stepIn.keys()) {
    if (!runIn.has(id)) problems.push(`${where}: in/${id} is not an input of that tool`);
  }
  for (const [id] of entries(step.out)) {
    if (!runOut.has(id)) problems.push(`${where}: out/${id} is not an output of that tool`);
  }
  for (const [id, spec] of runIn) {
    const type = typeof spec === "object" && !Array.isArray(spec) ? spec.type : spec;
    const fed = stepIn.get(id);
    const hasDefault = typeof spec === "object" && spec !== null && "default" in spec;
    if (!isOptional(type) && !hasDefault && !(fed && (fed.source || "default" in fed || fed.valueFrom))) {
      problems.push(`${where}: required input ${id} has no source, default or valueFrom`);
    }
  }
}

/** Replace each step's `run: path` by the parsed document it names (recursively). */
function resolveRuns(doc, file, problems, seen) {
  if (doc.class !== "Workflow" || !doc.steps) return;
  const steps = Array.isArray(doc.steps) ? doc.steps : Object.keys(doc.steps).map((id) => doc.steps[id]);
  const stepIds = Array.isArray(doc.steps) ? doc.steps.map((s) => s.id) : Object.keys(doc.steps);
  steps.forEach((step, i) => {
    if (typeof step.run !== "string") return;
    const target = path.resolve(path.dirname(file), step.run.replace(/^file:\/\//, ""));
    const where = `step ${stepIds[i]}: run ${step.run}`;
    if (!fs.existsSync(target)) {
      problems.push(`${where}: no such file`);
      return;
    }
    if (seen.has(target)) {
      problems.push(`${where}: circular reference`);
      return;
    }
    const [sub, subProblems] = loadDocument(target);
    subProblems.forEach((p) => problems.push(`${where}: ${p}`));
    if (!sub) return;
    resolveRuns(sub, target, problems, new Set([...seen, target]));
    checkWiring(step, sub, where, problems);
    step.run = sub;
  });
}

function issues(model) {
  return (model.filterIssues ? model.filterIssues("error") : model.errors || []).map(
    (issue) => `model: ${issue.loc || ""} ${issue.message || issue.code || "error"}`.replace(/\s+/g, " ").trim()
  );
}

// the types a CWL v1.0 parameter may have (plus "map", an sbg extension Composer knows)
const CWL_TYPES = new Set([
  "null", "boolean", "int", "long", "float", "double", "string", "File", "Directory",
  "record", "enum", "array", "map", "Any", "stdout", "stderr",
]);

/** Every input and output of a model has a type Composer understands (schema does not check map form). */
function checkTypes(model, where, problems) {
  for (const kind of ["inputs", "outputs"]) {
    for (const port of model[kind] || []) {
      const type = port.type || {};
      if (!CWL_TYPES.has(type.type)) {
        problems.push(`${where}: ${kind}/${port.id} has unknown type ${JSON.stringify(type.type)}`);
      } else if (type.type === "array" && typeof type.items === "string" && !CWL_TYPES.has(type.items)) {
        problems.push(`${where}: ${kind}/${port.id} is an array of unknown type ${JSON.stringify(type.items)}`);
      }
    }
  }
}

function hasPosition(entry) {
  const props = entry.customProps || {};
  return typeof props["sbg:x"] === "number" && typeof props["sbg:y"] === "number";
}

// Canvas geometry of cwl-svg at scale 1 (what Composer draws): a node with its label below
// needs about this much room, and a label wider than MAX_LABEL characters runs into the
// neighbouring column of nodes.
const MIN_DX = 200;
const MIN_DY = 120;
const MAX_LABEL = 32;

/** The canvas is tidy: no two nodes on top of each other, no label running into a neighbour. */
function checkLayout(model, where, problems) {
  const nodes = [];
  for (const kind of ["inputs", "outputs", "steps"]) {
    for (const entry of model[kind]) {
      if (!hasPosition(entry)) continue;
      // the label Composer shows: the entry's own, else (steps) the tool's, else the id
      const label = entry.label || (kind === "steps" && entry.run && entry.run.label) || entry.id;
      nodes.push({ name: `${kind}/${entry.id}`, x: entry.customProps["sbg:x"], y: entry.customProps["sbg:y"], label });
      if (String(label).length > MAX_LABEL) {
        problems.push(
          `${where}: ${kind}/${entry.id} shows the label "${label}" (${String(label).length} characters); ` +
            `over ${MAX_LABEL} it runs into neighbouring nodes, give it a short label`
        );
      }
    }
  }
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const a = nodes[i];
      const b = nodes[j];
      if (Math.abs(a.x - b.x) < MIN_DX && Math.abs(a.y - b.y) < MIN_DY) {
        problems.push(
          `${where}: ${a.name} (${a.x}, ${a.y}) and ${b.name} (${b.x}, ${b.y}) overlap on the canvas; ` +
            `keep nodes ${MIN_DX} apart in sbg:x or ${MIN_DY} apart in sbg:y`
        );
      }
    }
  }
}

/** Check that a workflow model and every step in it (recursively) are v1.0 models. */
function checkWorkflowModel(model, where, problems) {
  if (!(model instanceof V1WorkflowModel)) {
    problems.push(`${where}: model is ${model.constructor.name}, not V1WorkflowModel`);
    return;
  }
  if (model.steps.length === 0) problems.push(`${where}: workflow has no steps`);
  for (const kind of ["inputs", "outputs", "steps"]) {
    for (const entry of model[kind]) {
      if (!hasPosition(entry)) problems.push(`${where}: ${kind}/${entry.id} has no sbg:x/sbg:y (canvas position)`);
    }
  }
  checkTypes(model, where, problems);
  checkLayout(model, where, problems);
  for (const step of model.steps) {
    const at = `${where}: step ${step.id}`;
    if (!(step instanceof V1StepModel)) {
      problems.push(`${at}: model is ${step.constructor.name}, not V1StepModel`);
      continue;
    }
    if (!step.run || typeof step.run !== "object") {
      problems.push(`${at}: run was not resolved to a process (Composer would show an empty node)`);
    } else if (step.run instanceof V1WorkflowModel) {
      checkWorkflowModel(step.run, `${at} (nested)`, problems);
    } else if (step.run instanceof V1CommandLineToolModel) {
      checkTypes(step.run, `${at} (tool)`, problems);
    } else if (!(step.run instanceof V1CommandLineToolModel) && step.run.constructor.name !== "ExpressionToolModel") {
      problems.push(`${at}: run model is ${step.run.constructor.name}, not a v1.0 model`);
    }
    // every port the step file wires must exist on the tool it runs
    const runInputs = new Set((step.run && step.run.inputs ? step.run.inputs : []).map((p) => p.id));
    for (const port of step.in) {
      if (step.run && step.run.inputs && !runInputs.has(port.id)) {
        problems.push(`${at}: input ${port.id} is not an input of the tool it runs`);
      }
    }
    const runOutputs = new Set((step.run && step.run.outputs ? step.run.outputs : []).map((p) => p.id));
    for (const port of step.out) {
      if (step.run && step.run.outputs && !runOutputs.has(port.id)) {
        problems.push(`${at}: output ${port.id} is not an output of the tool it runs`);
      }
    }
  }
}

/** All the checks on one file; returns the list of problems (empty when it passes). */
function checkFile(file) {
  const [doc, problems] = loadDocument(file);
  if (!doc || problems.length) return problems;
  resolveRuns(doc, file, problems, new Set([file]));
  if (problems.length) return problems;

  // cwlts logs a warning for every expression it cannot evaluate; keep the output to the point
  const warn = console.warn;
  console.warn = () => {};
  let model;
  try {
    if (doc.class === "Workflow") {
      model = WorkflowFactory.from(doc, "document");
      checkWorkflowModel(model, "workflow", problems);
    } else if (doc.class === "CommandLineTool") {
      model = CommandLineToolFactory.from(doc, "document");
      if (!(model instanceof V1CommandLineToolModel)) {
        problems.push(`model is ${model.constructor.name}, not V1CommandLineToolModel`);
      }
      checkTypes(model, "tool", problems);
    } else {
      problems.push(`class ${doc.class}: cryoflow ships only CommandLineTools and Workflows`);
      return problems;
    }
  } catch (err) {
    problems.push(`model: cwlts could not build the model: ${err.message}`);
    return problems;
  } finally {
    console.warn = warn;
  }
  return problems.concat(issues(model));
}

function defaultFiles() {
  const files = [];
  for (const dir of ["tools", "workflows"]) {
    const full = path.join(ROOT, dir);
    if (!fs.existsSync(full)) continue;
    for (const name of fs.readdirSync(full).sort()) {
      if (name.endsWith(".cwl")) files.push(path.join(full, name));
    }
  }
  return files;
}

function main(argv) {
  const files = argv.length ? argv.map((f) => path.resolve(f)) : defaultFiles();
  if (files.length === 0) {
    console.error("rabix/check.js: no CWL files found");
    return 1;
  }
  let failed = 0;
  for (const file of files) {
    const name = path.relative(process.cwd(), file) || file;
    const problems = fs.existsSync(file) ? checkFile(file) : ["no such file"];
    if (problems.length) {
      failed += 1;
      problems.forEach((p) => console.error(`${name}: ${p}`));
      console.log(`FAIL ${name}`);
    } else {
      console.log(`ok   ${name}`);
    }
  }
  console.log(`${files.length - failed} of ${files.length} CWL files load in Composer's model (cwlts 1.15.29)`);
  return failed ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
