/*
 * Browser side of render.js: bundled by esbuild into the page that headless Chromium opens.
 * Draws one workflow with cwl-svg, the graph library of Rabix Composer, as Composer's canvas
 * does (read-only, at the positions given by sbg:x/sbg:y, scaled to fit).
 */
"use strict";

const { WorkflowFactory } = require("cwlts/models");
const { Workflow } = require("cwl-svg");

window.cryoflowRender = function (doc) {
  const model = WorkflowFactory.from(doc, "document");
  const svgRoot = document.getElementById("svg");
  const graph = new Workflow({ model, svgRoot, plugins: [], editingEnabled: false });
  graph.fitToViewport();
  const box = graph.workflow.getBoundingClientRect();
  return {
    steps: model.steps.length,
    inputs: model.inputs.length,
    outputs: model.outputs.length,
    box: { x: box.left, y: box.top, width: box.width, height: box.height },
  };
};
