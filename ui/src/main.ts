import { mount } from 'svelte';
import './app.css';
import App from './App.svelte';
import { takeKeyFromHash } from './lib/auth.svelte';

takeKeyFromHash();
const target = document.getElementById('app');
if (target) mount(App, { target });
